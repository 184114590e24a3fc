"""The FER-2013 trainer on a tiny generated FER-format CSV: outputs, resume, crash safety,
config files, the CLI, and DistributedDataParallel with two gloo processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from bionic_sparse.data.fer2013 import write_fer_csv
from bionic_sparse.training import TrainConfig, train
from bionic_sparse.training import trainer as trainer_mod

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = dict(units_per_neuron=2, block_size=8, front_channels=(4, 8), front_pool=2)


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("fer") / "tiny.csv"
    write_fer_csv(str(path), n_per_class_split=4)
    return str(path)


def cfg(tiny_csv, out, **kw) -> TrainConfig:
    base = dict(data=tiny_csv, out=str(out), epochs=2, batch_size=16, device="cpu", model_config=TINY_MODEL)
    return TrainConfig.from_dict({**base, **kw})


@pytest.mark.parametrize("model,execution", [("bionic", "sparse"), ("bionic", "dense_masked"), ("baseline", "sparse")])
def test_training_writes_every_output(tiny_csv, tmp_path, model, execution):
    c = cfg(tiny_csv, tmp_path, model=model, model_config={**TINY_MODEL, "execution": execution})
    res = train(c)
    for name in (
        "config.json",
        "metrics.csv",
        "last.pt",
        "best.pt",
        "results.json",
        "confusion_matrix.png",
        "learning_curves.png",
    ):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["seed"] == 0 and saved["versions"]["torch"] == torch.__version__
    assert list(saved["private_test"]["per_class"]) == [
        "angry",
        "disgust",
        "fear",
        "happy",
        "sad",
        "surprise",
        "neutral",
    ]
    assert 0 <= res["private_test"]["accuracy"] <= 1 and res["private_test"]["n"] == 28
    assert len((tmp_path / "metrics.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs


def test_resume_continues_without_losing_progress(tiny_csv, tmp_path):
    train(cfg(tiny_csv, tmp_path, epochs=1))
    first = json.loads((tmp_path / "results.json").read_text())["history"]
    res = train(cfg(tiny_csv, tmp_path, epochs=3, resume=True))
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3]
    assert res["history"][0] == first[0]


def test_crash_while_saving_keeps_the_last_checkpoint(tiny_csv, tmp_path, monkeypatch):
    train(cfg(tiny_csv, tmp_path, epochs=1))
    good = torch.load(tmp_path / "last.pt", weights_only=False)
    real_save = torch.save

    def crashing_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")  # a torn write of the temporary file
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(trainer_mod.torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tiny_csv, tmp_path, epochs=2, resume=True))
    monkeypatch.setattr(trainer_mod.torch, "save", real_save)
    again = torch.load(tmp_path / "last.pt", weights_only=False)
    assert again["epoch"] == good["epoch"] == 0


def test_quick_mode_and_errors(tiny_csv, tmp_path):
    res = train(cfg(tiny_csv, tmp_path, quick=True, epochs=5))
    assert res["epochs"] == 1
    with pytest.raises(ValueError, match="epochs and batch_size"):
        train(cfg(tiny_csv, tmp_path, epochs=0))
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict({"epoch": 3})


def test_reduced_budget_with_a_hold_out_split(tiny_csv, tmp_path):
    res = train(cfg(tiny_csv, tmp_path, train_images=14, holdout=0.25, select_on="holdout"))
    assert res["split_sizes"]["train"] == 14 and res["split_sizes"]["holdout"] == 7
    assert res["selected_on"] == "holdout" and 0 <= res["holdout"]["accuracy"] <= 1
    assert res["holdout"]["n"] == 7 and res["private_test"]["n"] == 28
    assert "holdout_acc" in (tmp_path / "metrics.csv").read_text().splitlines()[0]
    with pytest.raises(ValueError, match="needs holdout > 0"):
        train(cfg(tiny_csv, tmp_path, select_on="holdout"))
    with pytest.raises(ValueError, match="select_on must be"):
        train(cfg(tiny_csv, tmp_path, select_on="private_test"))


def _cli_config(tmp_path):
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"epochs": 1, "batch_size": 8, "model_config": TINY_MODEL}))
    return conf


def _train_fer_args(conf, data: str, out) -> list[str]:
    """``scripts/train_fer.py --sparse`` on CPU with a config file, data and output folder."""
    script = os.path.join(ROOT, "scripts", "train_fer.py")
    return [script, "--sparse", "--config", str(conf), "--data", data, "--out", str(out), "--device", "cpu"]


def test_cli_config_file_and_overrides(tiny_csv, tmp_path):
    conf = _cli_config(tmp_path)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, *_train_fer_args(conf, tiny_csv, out), "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((out / "results.json").read_text())
    assert saved["seed"] == 3 and saved["config"]["batch_size"] == 8
    missing = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "train_fer.py"), "--sparse", "--data", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert missing.returncode == 2 and "BIONIC_FER2013" in missing.stderr


def test_ddp_two_gloo_processes(tiny_csv, tmp_path):
    conf = _cli_config(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            *_train_fer_args(conf, tiny_csv, tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    saved = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert saved["world_size"] == 2


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "configs"))))
def test_shipped_configs_are_valid(name):
    with open(os.path.join(ROOT, "configs", name)) as f:
        cfg = TrainConfig.from_dict(json.load(f))
    assert cfg.model_config.masks == "connectome"  # the full model; the runner applies the variants
