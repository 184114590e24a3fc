# Quick start: `make demo` (main job on the embedded defaults) and `make test` (whole test suite).
# Each target creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bionic-installed

.PHONY: install demo test test-cpu test-gpu bench lint aot

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

# The whole suite: CPU tests, Triton interpreter tests and the sm_80/sm_90 AOT compile checks.
# pytest exits 5 when nothing ran; that is a failure here.
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu tests benchmarks

bench: $(STAMP)
	$(PY) -m pytest -q benchmarks -m "not gpu" --benchmark-autosave

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
