"""The FER-2013 trainer on a tiny generated FER-format CSV: outputs, exact resume, Ctrl-C, crash
safety, bad input, config files, the CLI, and DistributedDataParallel with two gloo processes."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bionic_sparse.data.fer2013 import write_fer_csv
from bionic_sparse.training import Run, TrainConfig, train
from bionic_sparse.training import checkpoint as checkpoint_mod
from bionic_sparse.training.cli import main
from bionic_sparse.training.trainer import shard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = dict(units_per_neuron=2, block_size=8, front_channels=(4, 8), front_pool=2)
TIMING = ("seconds", "images_per_s", "cpu_seconds")


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
    c = cfg(tiny_csv, tmp_path, model=model, tta=True, model_config={**TINY_MODEL, "execution": execution})
    res = train(c)
    for name in ("config.json", "metrics.csv", "last.pt", "best.pt", "results.json", "confusion_matrix.png"):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "learning_curves.png").stat().st_size > 1000
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
    assert 0 <= res["private_test_tta"]["accuracy"] <= 1 and "public_test_tta" in res  # both columns with tta
    assert saved["data_file"] == "tiny.csv" and len(saved["data_md5"]) == 32
    assert len((tmp_path / "metrics.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs
    # checkpoints hold what they are for: best.pt the model, last.pt everything resume needs
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    last = torch.load(tmp_path / "last.pt", weights_only=False)
    assert set(best) == {"model", "epoch", "config"}
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "best_acc", "history"} <= set(last)


def _metrics(path) -> list[dict]:
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def _interrupt_at(monkeypatch, epoch: int):
    """Make the run raise KeyboardInterrupt when it starts ``epoch`` (0-based)."""
    real = Run.train_epoch

    def train_epoch(self, e):
        if e == epoch:
            raise KeyboardInterrupt
        return real(self, e)

    monkeypatch.setattr(Run, "train_epoch", train_epoch)
    return real


@pytest.mark.parametrize("execution", ["sparse", "dense_masked"])
def test_resume_is_exact(tiny_csv, tmp_path, monkeypatch, execution):
    """Interrupted after epoch 2 of 4 and resumed == never interrupted: metrics and weights."""
    model_config = {**TINY_MODEL, "execution": execution}  # noise, plasticity and dropout are on
    run = dict(epochs=4, model_config=model_config, random_erasing=0.5)  # every augmentation draws
    straight = train(cfg(tiny_csv, tmp_path / "a", **run))
    real = _interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tiny_csv, tmp_path / "b", **run))
    monkeypatch.setattr(Run, "train_epoch", real)
    resumed = train(cfg(tiny_csv, tmp_path / "b", resume=True, **run))
    assert _metrics(tmp_path / "a" / "metrics.csv") == _metrics(tmp_path / "b" / "metrics.csv")
    assert resumed["private_test"] == straight["private_test"]
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k  # the layers' noise counters


def _interrupt_at_save(monkeypatch, n: int) -> list:
    """Make the ``n``-th in-epoch ``last.pt`` die while being written (the previous one stays)."""
    saves: list = []
    real = Run.save_last

    def save_last(self, epoch, in_epoch=None):
        if in_epoch is not None:
            saves.append((epoch + 1, in_epoch["step"]))
            if len(saves) == n:
                raise KeyboardInterrupt
        real(self, epoch, in_epoch)

    monkeypatch.setattr(Run, "save_last", save_last)
    return saves


def test_a_checkpoint_inside_an_epoch_resumes_exactly(tiny_csv, tmp_path, monkeypatch, capsys):
    """checkpoint_minutes writes last.pt between steps; a run killed in the middle of an epoch and
    resumed (with another checkpoint_minutes: not part of the run's identity) == never interrupted."""
    run = dict(epochs=2, batch_size=8, random_erasing=0.5)  # 4 steps per epoch; every augmentation draws
    straight = train(cfg(tiny_csv, tmp_path / "a", **run))
    saves = _interrupt_at_save(monkeypatch, 5)  # epoch 1 saves after steps 1-3, epoch 2 after step 1, 2 dies
    argv = ["--data", tiny_csv, "--out", str(tmp_path / "b"), "--device", "cpu", "--epochs", "2",
            "--batch-size", "8", "--random-erasing", "0.5", "--checkpoint-minutes", "1e-9"]  # fmt: skip
    kw = dict(model_config=TINY_MODEL)
    monkeypatch.setattr("bionic_sparse.training.cli.config_from_args", _with_model_config(kw))
    assert main(argv, prog="bionic-train") == 130
    assert saves == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2)]
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not ln.lstrip().startswith("epoch ")]
    assert len(err) == 1 and "interrupted in epoch 2/2" in err[0] and "holds step 1/4" in err[0], err
    last = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert last["epoch"] == 0 and last["in_epoch"]["epoch"] == 1 and last["in_epoch"]["step"] == 1
    monkeypatch.undo()
    resumed = train(cfg(tiny_csv, tmp_path / "b", resume=True, checkpoint_minutes=0, **run))
    assert "in epoch 2, after step 1/4" in capsys.readouterr().out
    assert _metrics(tmp_path / "a" / "metrics.csv") == _metrics(tmp_path / "b" / "metrics.csv")
    assert resumed["private_test"] == straight["private_test"]
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert "in_epoch" not in b  # the epoch's end closes it
    for k in a["model"]:
        if isinstance(a["model"][k], torch.Tensor):
            assert torch.equal(a["model"][k], b["model"][k]), k
        else:
            assert a["model"][k] == b["model"][k], k
    with pytest.raises(ValueError, match="checkpoint_minutes"):
        cfg(tiny_csv, tmp_path / "c", checkpoint_minutes=-1)


def _with_model_config(kw: dict):
    """config_from_args with ``kw`` on top (the CLI has no flag for the tiny test model)."""
    from bionic_sparse.training import cli

    real = cli.config_from_args

    def config_from_args(argv, prog=None):
        c = real(argv, prog)
        return TrainConfig.from_dict({**c.to_dict(), **kw})

    return config_from_args


def test_resume_without_a_checkpoint_says_so(tiny_csv, tmp_path, capsys):
    train(cfg(tiny_csv, tmp_path, epochs=1, resume=True))
    assert f"no checkpoint at {tmp_path / 'last.pt'}" in capsys.readouterr().out


def test_crash_while_saving_keeps_the_last_checkpoint(tiny_csv, tmp_path, monkeypatch):
    real_save = torch.save

    def crashing_save(obj, f, *a, **k):
        if obj.get("epoch") == 1 and "optimizer" in obj:  # epoch 2's last.pt: killed mid-write
            with open(f, "wb") as fh:
                fh.write(b"partial")  # a torn write of the temporary file
            raise KeyboardInterrupt("killed mid-write")
        real_save(obj, f, *a, **k)

    monkeypatch.setattr(checkpoint_mod.torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tiny_csv, tmp_path, epochs=2))
    monkeypatch.setattr(checkpoint_mod.torch, "save", real_save)
    again = torch.load(tmp_path / "last.pt", weights_only=False)
    assert again["epoch"] == 0  # epoch 1's checkpoint, whole
    assert train(cfg(tiny_csv, tmp_path, epochs=2, resume=True))["epochs"] == 2


def test_quick_mode_records_what_it_ran(tiny_csv, tmp_path):
    res = train(cfg(tiny_csv, tmp_path, quick=True, epochs=5, batch_size=4))
    assert res["epochs"] == 1 and res["split_sizes"]["train"] == 28
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["epochs"] == 1
    # config.json and results.json agree on every field, --quick included
    assert config == json.loads((tmp_path / "results.json").read_text())["config"]
    assert res["identity"]["epochs"] == 1
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and float(rows[0]["lr"]) > 0
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


def test_shards_are_equal_length():
    perm = torch.randperm(257)
    parts = [shard(perm, r, 2) for r in range(2)]
    assert [p.numel() for p in parts] == [128, 128]
    assert not set(parts[0].tolist()) & set(parts[1].tolist())
    assert [shard(torch.arange(17), r, 2).numel() for r in range(2)] == [8, 8]
    assert torch.equal(shard(perm, 0, 1), perm)


# ---- the command line as users meet it --------------------------------------------------------


def _write(path, text: str | bytes) -> str:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def _bad_inputs(tmp_path) -> dict:
    px = " ".join(["7"] * 2304)
    gz = tmp_path / "cut.csv.gz"
    write_fer_csv(str(gz), n_per_class_split=2)
    gz.write_bytes(gz.read_bytes()[:-300])
    no_private = tmp_path / "noprivate.csv"
    rows = "".join(f"{k % 7},{px},{u}\n" for u in ("Training", "PublicTest") for k in range(7))
    _write(no_private, "emotion,pixels,Usage\n" + rows)
    return {
        "missing path": ([], str(tmp_path / "nope.csv"), "BIONIC_FER2013"),
        "malformed row": ([], _write(tmp_path / "bad.csv", f"emotion,pixels,Usage\n0,{px},Training\n1,1 2,Training\n"),
                          "row 3: expected 2304 pixels"),
        "missing header": ([], _write(tmp_path / "nohead.csv", f"0,{px},Training\n"), "expected a header naming"),
        "empty file": ([], _write(tmp_path / "empty.csv", ""), "the file is empty"),
        "truncated gzip": ([], str(gz), "truncated or corrupt"),
        "junk npz": ([], _write(tmp_path / "junk.npz", b"\x80\x04junk" * 50), "not a FER-2013 .npz cache"),
        "no PrivateTest rows": ([], str(no_private), "the private_test split has no images"),
        "bad config file": (["--config", _write(tmp_path / "c.json", "{oops")], None, "is not valid JSON"),
        "unknown config key": (["--config", _write(tmp_path / "k.json", '{"epoch": 2}')], None, "unknown config keys"),
        "bad value": (["--epochs", "0"], None, "epochs and batch_size must be >= 1"),
    }  # fmt: skip


def test_bad_input_is_one_error_line_and_leaves_no_folder(tiny_csv, tmp_path, capsys):
    for case, (extra, data, match) in _bad_inputs(tmp_path).items():
        out = tmp_path / "out" / case.replace(" ", "_")
        code = main(["--sparse", "--data", data or tiny_csv, "--out", str(out), "--device", "cpu", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, case
        assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], (case, err)
        if data:
            assert os.path.basename(data) in err[0], case
        assert not out.exists(), case


def test_ctrl_c_names_the_resume_command(tiny_csv, tmp_path, monkeypatch, capsys):
    argv = ["--sparse", "--data", tiny_csv, "--out", str(tmp_path / "r"), "--device", "cpu", "--epochs", "3"]
    real = _interrupt_at(monkeypatch, 0)
    assert main(argv, prog="bionic-train") == 130
    err = capsys.readouterr().err
    assert "before the first epoch ended" in err and err.strip().endswith(
        f"Start again with: bionic-train {' '.join(argv)} --resume"
    )
    assert main(argv) == 2  # the folder holds that run's config.json: no silent mix
    assert "--out" in capsys.readouterr().err
    argv = [*argv, "--resume"]
    monkeypatch.setattr(Run, "train_epoch", real)
    _interrupt_at(monkeypatch, 1)
    assert main(argv, prog="bionic-train") == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    err = [ln for ln in err.splitlines() if ln.strip() and not ln.lstrip().startswith("epoch ")]  # tqdm
    assert len(err) == 1 and "interrupted in epoch 2/3" in err[0]
    assert err[0].endswith(f"Continue with: bionic-train {' '.join(argv)}")
    monkeypatch.setattr(Run, "train_epoch", real)
    assert main(argv) == 0
    assert "resumed from" in capsys.readouterr().out


def _module_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "bionic_sparse.training", *args]


def test_real_sigint_exits_130_and_its_continue_command_runs(tiny_csv, tmp_path):
    out = tmp_path / "sig"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = _module_cmd("--sparse", "--data", tiny_csv, "--out", str(out), "--device", "cpu", "--epochs", "4")
    # NOTE: a job started in the background by a non-interactive shell inherits SIGINT as ignored
    # (and Python then keeps it ignored); the child gets the default, as in a terminal.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while not (out / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and f"{sys.executable} -m bionic_sparse.training" in err
    again = err.strip().splitlines()[-1].split("Continue with: ", 1)[1]  # pasted into a shell, as printed
    done = subprocess.run(again, shell=True, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stdout and (out / "results.json").exists()


def test_cli_config_file_and_overrides(tiny_csv, tmp_path):
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"epochs": 1, "batch_size": 8, "model_config": TINY_MODEL}))
    out = tmp_path / "run"
    script = os.path.join(ROOT, "scripts", "train_fer.py")
    args = ["--sparse", "--config", str(conf), "--data", tiny_csv, "--out", str(out), "--device", "cpu", "--seed", "3"]
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((out / "results.json").read_text())
    assert saved["seed"] == 3 and saved["config"]["batch_size"] == 8
    yaml_conf = tmp_path / "conf.yaml"
    yaml_conf.write_text("epochs: 1\nbatch_size: 8\nmodel_config:\n  units_per_neuron: 2\n  block_size: 8\n")
    bad = subprocess.run(
        _module_cmd("--config", str(yaml_conf), "--data", str(tmp_path / "none.csv")), capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_ddp_two_gloo_processes_on_an_uneven_dataset(tiny_csv, tmp_path):
    """17 training images, batch 8, 2 ranks: with unequal shards rank 0 would take 2 steps and
    rank 1 one, and the second all-reduce would wait forever."""
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"epochs": 2, "batch_size": 8, "train_images": 17, "model_config": TINY_MODEL}))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run_cmd = ["-m", "bionic_sparse.training", "--sparse", "--config", str(conf), "--data", tiny_csv]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         *run_cmd, "--out", str(tmp_path / "ddp"), "--device", "cpu"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    saved = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert saved["world_size"] == 2 and saved["split_sizes"]["train"] == 17


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "configs"))))
def test_shipped_configs_are_valid(name):
    with open(os.path.join(ROOT, "configs", name)) as f:
        cfg = TrainConfig.from_dict(json.load(f))
    cfg.validate()
    assert cfg.model_config.masks == "connectome"  # the full model; the runner applies the variants


def test_resume_from_an_unusable_checkpoint_is_one_error_line(tiny_csv, tmp_path, capsys):
    argv = ["--sparse", "--data", tiny_csv, "--out", str(tmp_path), "--device", "cpu", "--epochs", "1"]
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    assert main([*argv, "--resume"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: {tmp_path / 'last.pt'} cannot be read (UnpicklingError); delete it to start over"
    )
    (tmp_path / "last.pt").unlink()
    assert main(argv) == 0
    capsys.readouterr()
    conf = tmp_path / "other.json"
    conf.write_text(json.dumps({"model_config": {**TINY_MODEL, "units_per_neuron": 3}}))
    assert main([*argv, "--resume", "--config", str(conf)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "belongs to another run" in err[0] and "model_config.units_per_neuron 16 -> 3" in err[0]


def test_ctrl_c_in_the_final_evaluation(tiny_csv, tmp_path, monkeypatch, capsys):
    argv = ["--sparse", "--data", tiny_csv, "--out", str(tmp_path), "--device", "cpu", "--epochs", "1"]

    def interrupted(self):
        raise KeyboardInterrupt

    real = Run.finish
    monkeypatch.setattr(Run, "finish", interrupted)
    assert main(argv) == 130
    assert "interrupted in the final evaluation" in capsys.readouterr().err
    monkeypatch.setattr(Run, "finish", real)
    assert main([*argv, "--resume"]) == 0  # no epoch left: evaluates and writes results.json
    assert (tmp_path / "results.json").exists()


def test_a_closed_stdout_stops_quietly_after_the_checkpoint(tiny_csv, tmp_path):
    """`bionic-train ... | head -1`: no BrokenPipeError traceback, and the epoch that was being
    reported is already saved."""
    out = tmp_path / "pipe"
    cmd = _module_cmd("--sparse", "--data", tiny_csv, "--out", str(out), "--device", "cpu", "--epochs", "50")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    while not proc.stdout.readline().startswith("epoch 1:"):
        pass
    proc.stdout.close()  # the reader goes away
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 141, err[-2000:]
    assert "Traceback" not in err
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] >= 0


def test_metrics_log_the_plasticity_update_relative_to_the_optimiser(tiny_csv, tmp_path):
    train(cfg(tiny_csv, tmp_path / "bio", epochs=1, model_config={**TINY_MODEL, "hebbian_eta": 0.01}))
    with open(tmp_path / "bio" / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    ratios = [float(row[f"plastic_over_opt_l{i}"]) for i in (1, 2, 3)]
    assert all(0 < r < float("inf") for r in ratios), ratios
    train(cfg(tiny_csv, tmp_path / "base", epochs=1, model="baseline"))
    with open(tmp_path / "base" / "metrics.csv") as f:
        assert not any(k.startswith("plastic_over_opt") for k in next(csv.DictReader(f)))


def test_compiled_training_steps_equal_eager_ones(tiny_csv, tmp_path, monkeypatch):
    """``--compile`` (inductor): a few BioNIC steps with noise and plasticity equal eager ones within
    float rounding (inductor's own random numbers are switched off to compare dropout too)."""
    import torch._dynamo
    import torch._inductor.config

    torch._dynamo.reset()
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    runs, start = {}, {}
    for compiled in (False, True):
        run = Run.setup(cfg(tiny_csv, tmp_path / str(compiled), epochs=2, batch_size=8, compile=compiled))
        start[compiled] = {n: p.detach().clone() for n, p in run.model.named_parameters()}
        run.train_epoch(0)
        runs[compiled] = run
    eager, comp = (dict(runs[c].model.named_parameters()) for c in (False, True))
    for name, p in eager.items():
        assert torch.equal(start[True][name], start[False][name]), name  # the same initial weights
        # Adam magnifies rounding element by element: a gradient entry near zero whose rounding differs
        # moves its weight by a different fraction of a step (seen on an Intel Xeon: one entry of
        # front.7.weight a quarter of a step away). So compare what training did to each parameter as
        # a whole: a wrong gradient changes its movement by about the movement itself.
        moved = float((p - start[False][name]).detach().norm())
        diff = float((comp[name] - p).detach().norm())
        assert diff <= 0.05 * moved + 1e-7, (name, diff, moved)  # seen: at most 0.0065
    assert runs[True].history == runs[False].history == []


def test_config_and_results_agree_on_every_field(tiny_csv, tmp_path):
    res = train(cfg(tiny_csv, tmp_path, epochs=1, tta=True))
    assert json.loads((tmp_path / "results.json").read_text())["config"] == json.loads(
        (tmp_path / "config.json").read_text()
    )
    assert res["identity"]["epochs"] == res["config"]["epochs"] == res["epochs"] == 1


def test_run_prints_its_estimated_length_at_the_start(tiny_csv, tmp_path, monkeypatch, capsys):
    import bionic_sparse.training.trainer as trainer

    monkeypatch.setattr(trainer, "ESTIMATE_STEPS", 1)
    train(cfg(tiny_csv, tmp_path, epochs=2, batch_size=4))
    out = capsys.readouterr()
    text = out.out + out.err
    assert "estimate:" in text and "for the 2 epochs to go" in text
    assert "to go)" in text  # the first epoch's line gives the time left


def _out_mistakes(tmp_path) -> dict:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    return {
        "existing file": (str(a_file), None, "is a file, not a folder"),
        "inside a file": (str(a_file / "run"), None, "is a file, so no folder can be made inside it"),
        "read-only location": (str(tmp_path / "ro" / "run"), OSError(errno.EROFS, "Read-only file system"),
                               "Read-only file system"),
        "no permission": (str(tmp_path / "locked" / "run"), PermissionError(errno.EACCES, "Permission denied"),
                          "Permission denied"),
    }  # fmt: skip


def test_out_mistakes_are_one_error_line_before_the_data_loads(tiny_csv, tmp_path, monkeypatch, capsys):
    """Every ``--out`` that cannot hold a run ends in one ``error:`` line naming it, before the data
    loads (the loader would fail the test), and leaves nothing behind. A read-only file system and
    a missing permission are simulated: the checker's write test fails as the OS would make it."""
    import tempfile

    import bionic_sparse.training.trainer as trainer

    def no_data(*a, **k):
        raise AssertionError("the data loaded before --out was checked")

    monkeypatch.setattr(trainer, "load_fer2013", no_data)
    real_mkstemp = tempfile.mkstemp

    def tree():
        return sorted(str(p) for p in tmp_path.rglob("*"))

    for case, (out, os_error, match) in _out_mistakes(tmp_path).items():
        if os_error is not None:
            os.makedirs(os.path.dirname(out))
        before = tree()

        def mkstemp(*a, _err=os_error, **k):
            if _err is not None:
                raise _err
            return real_mkstemp(*a, **k)

        monkeypatch.setattr(trainer.tempfile, "mkstemp", mkstemp)
        code = main(["--sparse", "--data", tiny_csv, "--out", out, "--device", "cpu"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, case
        assert len(err) == 1 and err[0].startswith("error: --out ") and match in err[0], (case, err)
        assert tree() == before, case
