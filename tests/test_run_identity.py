"""A run folder never lies: --resume checks the run's identity, a new run never mixes with an old
one, config types, devices and optional features are checked before anything is written, and the
printed continue commands run when pasted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from bionic_sparse.data.fer2013 import write_fer_csv
from bionic_sparse.training import ablation, trainer
from bionic_sparse.training.cli import main
from bionic_sparse.training.config import NON_IDENTITY_FIELDS, TrainConfig

TINY_MODEL = {"units_per_neuron": 2, "block_size": 8, "front_channels": [4, 8], "front_pool": 2}


def _write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fer")
    write_fer_csv(str(root / "a.csv"), n_per_class_split=3, seed=0)
    write_fer_csv(str(root / "b.csv"), n_per_class_split=3, seed=1)  # same shape, other images
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """One finished 1-epoch run: its folder and the argv that made it."""
    out = tmp_path_factory.mktemp("run") / "r"
    conf = _write(data / "tiny.json", json.dumps({"model_config": TINY_MODEL, "batch_size": 8}))
    argv = ["--sparse", "--config", conf, "--data", str(data / "a.csv"), "--out", str(out), "--device", "cpu"]
    argv += ["--epochs", "1"]
    assert main(argv) == 0
    return out, argv


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _replace(argv: list[str], flag: str, value: str) -> list[str]:
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


@pytest.mark.parametrize(
    "flag,value,field",
    [
        ("--lr", "0.01", "lr 0.001 -> 0.01"),
        ("--epochs", "2", "epochs 1 -> 2"),
        ("--seed", "3", "seed 0 -> 3"),
        ("--batch-size", "4", "batch_size 8 -> 4"),
        ("--train-images", "14", "train_images None -> 14"),
        ("--holdout", "0.25", "holdout 0.0 -> 0.25"),
        ("--data", "b.csv", "data_md5 "),
        ("--quick", None, "quick False -> True"),
        ("--baseline", None, "model 'bionic' -> 'baseline'"),
        ("--tta", None, "tta False -> True"),
        ("--random-erasing", "0.5", "random_erasing 0.0 -> 0.5"),
    ],
    ids=lambda v: str(v).strip("-") if isinstance(v, str) else None,
)
def test_resume_refuses_a_changed_run(trained, data, capsys, flag, value, field):
    out, argv = trained
    before = {p: os.path.getmtime(out / p) for p in os.listdir(out)}
    if value is None:
        changed = [a for a in argv if a != "--sparse"] + [flag]
    elif flag == "--data":
        changed = _replace(argv, flag, str(data / value))
    else:
        changed = _replace(argv, flag, value)
    assert main([*changed, "--resume"]) == 2
    err = _one_error(capsys)
    assert "belongs to another run" in err and field in err and "--overwrite" in err, err
    assert {p: os.path.getmtime(out / p) for p in os.listdir(out)} == before, "nothing may be written"


def test_resume_accepts_what_cannot_change_the_result(trained, capsys):
    out, argv = trained
    import torch

    again = _replace(_replace(argv, "--out", str(out) + os.sep), "--device", "auto")  # CPU here: same type
    threads = torch.get_num_threads()
    try:
        assert main([*again, "--resume", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert "resumed from" in capsys.readouterr().out
    assert {"out", "resume", "tensorboard", "device"} <= set(NON_IDENTITY_FIELDS)


def test_resume_of_a_checkpoint_from_before_a_new_config_field(trained, tmp_path, capsys):
    """A field added to the config later (here ``random_erasing``, ``model_config.dropout``) is,
    at its default, what the code that wrote the checkpoint did: the resume goes on; a value
    other than the default is another run."""
    import torch

    out, argv = trained
    copy = tmp_path / "old"
    shutil.copytree(out, copy)
    ckpt = torch.load(copy / "last.pt", weights_only=False)
    assert ckpt["identity"]["random_erasing"] == 0.0
    del ckpt["identity"]["random_erasing"], ckpt["identity"]["model_config"]["dropout"]
    torch.save(ckpt, copy / "last.pt")
    os.remove(copy / "results.json")
    again = _replace(argv, "--out", str(copy))
    assert main([*again, "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert main([*_replace(again, "--random-erasing", "0.25"), "--resume"]) == 2
    assert "random_erasing 0.0 -> 0.25" in _one_error(capsys)


def test_resume_across_a_code_change_needs_a_flag_and_is_recorded(data, tmp_path, monkeypatch, capsys):
    argv = ["--sparse", "--data", str(data / "a.csv"), "--out", str(tmp_path / "r"), "--device", "cpu"]
    argv += [
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--config",
        _write(tmp_path / "m.json", json.dumps({"model_config": TINY_MODEL})),
    ]
    real_epoch = trainer.Run.train_epoch

    def stop_in_epoch_2(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(self, epoch)

    monkeypatch.setattr(trainer.Run, "train_epoch", stop_in_epoch_2)
    assert main(argv) == 130
    monkeypatch.setattr(trainer.Run, "train_epoch", real_epoch)
    capsys.readouterr()
    monkeypatch.setattr(trainer, "code_revision", lambda: "git:0123abcd")
    assert main([*argv, "--resume"]) == 2
    err = _one_error(capsys)
    assert "code_revision" in err and "git:0123abcd" in err and "--allow-code-change" in err
    assert main([*argv, "--resume", "--allow-code-change"]) == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    revisions = [r["code_revision"] for r in res["code_revisions"]]
    assert len(revisions) == 2 and revisions[1] == "git:0123abcd" and res["code_revisions"][1]["from_epoch"] == 2


def test_a_new_run_never_mixes_with_an_old_one(trained, tmp_path, capsys):
    out, argv = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    argv = _replace(argv, "--out", str(copy))
    before = {p: os.path.getmtime(copy / p) for p in os.listdir(copy)}
    assert main(argv) == 2
    err = _one_error(capsys)
    assert "holds another run" in err and "--resume" in err and "--overwrite" in err
    assert {p: os.path.getmtime(copy / p) for p in os.listdir(copy)} == before
    (copy / "stale.png").write_text("not a run file")  # the user's own files are left alone
    os.remove(copy / "results.json")
    assert main([*argv, "--overwrite", "--epochs", "1"]) == 0
    assert (copy / "results.json").exists() and (copy / "stale.png").exists()
    capsys.readouterr()
    assert main([*argv, "--overwrite", "--resume"]) == 2
    assert "exclude each other" in _one_error(capsys)


CONFIG_CASES = {
    # file name, text, expected: a value of the loaded config or the error
    "lr.yaml": ("lr: 2e-3\n", ("lr", 0.002)),
    "epochs.json": ('{"epochs": "5"}', ("epochs", 5)),
    "channels.json": ('{"model_config": {"front_channels": "abc"}}', "model_config.front_channels: expected a list"),
    "channel.json": ('{"model_config": {"front_channels": [4, "x"]}}', "front_channels[1]: expected an integer"),
    "batch.json": ('{"batch_size": 2.5}', "batch_size: expected an integer, got 2.5"),
    "flag.yaml": ("augment: maybe\n", "augment: expected true or false"),
    "nan.json": ('{"lr": "nan"}', "lr: expected a finite number"),
    "noise.json": ('{"model_config": {"noise_sigma": -1}}', "model_config.noise_sigma must be >= 0"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CONFIG_CASES))
def test_config_types_are_checked_when_loaded(data, tmp_path, capsys, name):
    text, expected = CONFIG_CASES[name]
    conf = _write(tmp_path / name, text)
    out = tmp_path / "out"
    if isinstance(expected, tuple):
        from bionic_sparse.training.cli import config_from_args

        cfg = config_from_args(["--config", conf, "--data", str(data / "a.csv")])
        assert getattr(cfg, expected[0]) == expected[1] and type(getattr(cfg, expected[0])) is type(expected[1])
        return
    assert main(["--config", conf, "--data", str(data / "a.csv"), "--out", str(out)]) == 2
    assert expected in _one_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    "args,match",
    [
        (["--device", "cuda"], "no CUDA GPU is available"),
        (["--device", "cuda:3"], "no CUDA GPU is available"),
        (["--device", "foo"], "is not a device"),
        (["--device", "mps"], "runs on cpu or cuda"),
        (["--device", "cpu", "--amp"], "--amp is bf16 autocast on a CUDA GPU"),
    ],
)
def test_devices_are_checked_before_the_data_loads(tmp_path, capsys, args, match):
    import torch

    if torch.cuda.is_available() and "cuda" in args[-1]:
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    # a data path that does not exist: the device error must come first
    assert main(["--data", str(tmp_path / "missing.csv"), "--out", str(out), *args]) == 2
    assert match in _one_error(capsys)
    assert not out.exists()


def test_tensorboard_without_its_extra_is_one_line(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    out = tmp_path / "out"
    assert main(["--data", str(data / "a.csv"), "--out", str(out), "--device", "cpu", "--tensorboard"]) == 2
    assert "bionic-sparse[tensorboard]" in _one_error(capsys)
    assert not out.exists()


def test_trainer_help_and_a_run_without_the_train_extra():
    code = (
        "import sys; sys.modules['tqdm'] = None; sys.modules['matplotlib'] = None\n"
        "from bionic_sparse.training.cli import main\n"
        "sys.exit(main(sys.argv[1:]))"
    )
    env = dict(os.environ, BIONIC_SPARSE_NO_REEXEC="1")
    helped = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, env=env)
    assert helped.returncode == 0 and "--resume" in helped.stdout and not helped.stderr
    ran = subprocess.run([sys.executable, "-c", code, "--device", "cpu"], capture_output=True, text=True, env=env)
    assert ran.returncode == 2 and ran.stderr.strip().splitlines() == [
        "error: the trainer needs the [train] extra (tqdm, matplotlib missing): pip install 'bionic-sparse[train]'"
    ]


def test_ablation_ctrl_c_prints_a_command_that_runs(data, tmp_path, monkeypatch, capsys):
    conf = _write(tmp_path / "tiny.json", json.dumps({"model_config": TINY_MODEL, "batch_size": 8, "device": "cpu"}))
    argv = ["--config", conf, "--data", str(data / "a.csv"), "--out", str(tmp_path / "grid"), "--quick"]
    argv += ["--variants", "full", "--seeds", "0"]

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ablation, "run_ablations", interrupted)
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-m", "bionic_sparse.training.ablation", *argv])
    assert ablation.main(argv) == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    again = line.split("Continue with: ", 1)[1]
    assert again.startswith(f"{sys.executable} -m bionic_sparse.training.ablation ")
    done = subprocess.run(again, shell=True, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / "grid" / "full" / "seed0" / "results.json").exists()


def test_ablation_list_into_a_closed_pipe_and_a_summary_of_failed_runs(tmp_path):
    env = dict(os.environ, BIONIC_SPARSE_NO_REEXEC="1")
    (tmp_path / "none").mkdir()
    for flags in ("--list", f"--report --out {tmp_path / 'none'}"):  # the reader leaves after two lines
        proc = subprocess.run(
            f"{sys.executable} -m bionic_sparse.training.ablation {flags} | head -2",
            shell=True,
            capture_output=True,
            text=True,
            env=env,
        )
        assert len(proc.stdout.splitlines()) == 2 and "Traceback" not in proc.stderr, (flags, proc.stderr)
    assert (tmp_path / "none" / "ablations.md").exists()  # --report wrote its files before printing
    bad = _write(tmp_path / "bad.csv", "emotion,pixels,Usage\n0,1 2 3,Training\n")  # every run fails on it
    out = tmp_path / "grid"
    ran = subprocess.run(
        [sys.executable, "-m", "bionic_sparse.training.ablation", "--out", str(out), "--data", bad, "--quick"]
        + ["--variants", "full", "--seeds", "0"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ran.returncode == 1, ran.stderr[-2000:]
    assert "1 failed" in ran.stdout and "ablations.md" in ran.stdout
    assert "ablations.png" not in ran.stdout and not (out / "ablations.png").exists()
    assert not (out / "ablations_delta.png").exists()


def test_config_round_trip_keeps_types():
    cfg = TrainConfig.from_dict({"lr": "1e-3", "model_config": {"front_channels": [8, 16]}})
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.model_config.front_channels == (8, 16)
