"""The package stands on its own: entry points, declared dependencies, no references to this
repository's scripts/ or to any particular machine's files."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _py_files(folder: str) -> list[str]:
    return glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True)


def test_the_training_package_never_refers_to_scripts():
    for path in _py_files("bionic_sparse/training"):
        with open(path) as f:
            assert "scripts" not in f.read(), path


@pytest.mark.parametrize("folder", ["bionic_sparse", "triton_kernels", "scripts", "tests", "benchmarks", "configs"])
def test_no_text_about_one_machines_files(folder):
    files = (
        _py_files(folder)
        + glob.glob(os.path.join(ROOT, folder, "*.json"))
        + glob.glob(os.path.join(ROOT, folder, "*.sh"))
    )
    for path in files:
        if os.path.abspath(path) == os.path.abspath(__file__):
            continue
        with open(path) as f:
            text = f.read()
        assert "shared/data" not in text and "../shared" not in text, path


def test_readme_and_result_readmes_describe_the_project():
    for path in [
        os.path.join(ROOT, "README.md"),
        *glob.glob(os.path.join(ROOT, "results", "**", "README.md"), recursive=True),
    ]:
        with open(path) as f:
            text = f.read()
        assert "shared/data" not in text and "this workplace" not in text, path


def test_entry_points_and_dependencies_are_declared():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["scripts"] == {
        "bionic-train": "bionic_sparse.training.cli:main",
        "bionic-ablations": "bionic_sparse.training.ablation:main",
    }
    train = " ".join(project["optional-dependencies"]["train"])
    for dep in ("pyyaml", "matplotlib", "tqdm", "torchvision", "pillow"):
        assert dep in train, dep
    assert not any(d.startswith(("matplotlib", "tqdm", "torchvision")) for d in project["dependencies"])


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "bionic_sparse.training", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--resume" in proc.stdout and "--tta" in proc.stdout


def test_run_plots_raise_no_deprecation_warnings(tmp_path):
    from bionic_sparse.training.report import plot_run

    history = [{"epoch": 1, "train_acc": 0.3, "public_acc": 0.25}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_run(str(tmp_path), history, [[1] * 7 for _ in range(7)])
    assert (tmp_path / "learning_curves.png").exists() and (tmp_path / "confusion_matrix.png").exists()


def test_kernels_import_under_the_project_namespace(tmp_path):
    """triton_kernels/ installs as bionic_sparse.triton_kernels: no top-level name that Triton's
    own kernel library or the PyPI package triton-kernels could shadow, or be shadowed by."""
    code = (
        "import importlib.util, bionic_sparse.triton_kernels as tk, bionic_sparse.triton_kernels.bsr_sdd as s;"
        "print(tk.__file__); print(s.__name__); print(importlib.util.find_spec('triton_kernels'))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kernels_file, module, top_level = proc.stdout.split("\n")[:3]
    assert os.path.samefile(kernels_file, os.path.join(ROOT, "triton_kernels", "__init__.py"))
    assert module == "bionic_sparse.triton_kernels.bsr_sdd"
    assert top_level == "None"


def test_developer_tools_do_not_ship():
    assert not os.path.exists(os.path.join(ROOT, "triton_kernels", "aot.py"))


def test_demo_ends_with_the_fer_command(tmp_path):
    demo = os.path.join(ROOT, "scripts", "demo.py")
    args = ["--steps", "2", "--batch", "8", "--hidden", "256", "--block-size", "32", "--device", "cpu"]
    proc = subprocess.run(
        [sys.executable, demo, *args, "--out", str(tmp_path / "demo")], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert "-m bionic_sparse.training --sparse --data PATH" in last


def test_every_package_folder_is_declared():
    """The wheel lists its packages explicitly (for the triton_kernels mapping): every folder of
    the library with an __init__.py must be in that list, or a pip install would lack it."""
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        declared = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = {
        os.path.relpath(os.path.dirname(p), ROOT).replace(os.sep, ".")
        for p in glob.glob(os.path.join(ROOT, "bionic_sparse", "**", "__init__.py"), recursive=True)
    }
    assert found <= declared, f"not declared in pyproject.toml: {sorted(found - declared)}"
    assert "bionic_sparse.triton_kernels" in declared


def test_the_c_sources_ship_in_the_wheel():
    """The compiled noise generator is built from a .c file at run time: it must be package data
    (without it an installed package silently runs the slower numpy generator)."""
    import fnmatch

    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["bionic_sparse"]
    sources = [
        os.path.relpath(p, os.path.join(ROOT, "bionic_sparse"))
        for p in glob.glob(os.path.join(ROOT, "bionic_sparse", "csrc", "*.c"))
    ]
    assert sources and all(any(fnmatch.fnmatch(s, pat) for pat in patterns) for s in sources)
