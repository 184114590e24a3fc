"""Ablation runner: smoke run on a tiny generated dataset, resume, crash tolerance, report."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from bionic_sparse.data.fer2013 import write_fer_csv
from bionic_sparse.training.ablation import VARIANTS, RunSpec, run_ablations, summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "epochs": 1,
    "batch_size": 16,
    "device": "cpu",
    "model_config": {"units_per_neuron": 2, "block_size": 8, "front_channels": [4, 8], "front_pool": 2},
}


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("fer") / "tiny.csv"
    write_fer_csv(str(path), n_per_class_split=3)
    return str(path)


def test_grid_covers_the_design():
    expected = {
        "full",
        "no_biology",
        "dense_masks",
        "random_masks",
        "rewired_masks",
        "shuffled_laminae",
        "unsigned",
        "no_inhibition",
        "no_hebbian",
        "no_homeostasis",
        "no_layernorm",
        "no_augmentation",
        "no_noise",
        "no_conv_front_end",
        "baseline",
        "plasticity_lr",
    }
    assert set(VARIANTS) == expected
    assert VARIANTS["plasticity_lr"] == ({"plasticity_schedule": "lr"}, {})
    # the connectome masks alone: every biological feature off, the masks kept
    _, no_biology = VARIANTS["no_biology"]
    assert no_biology == {"signed": False, "noise_sigma": 0.0, "hebbian_eta": 0.0, "homeostasis_rate": 0.0}


def test_report_statistics(tmp_path):
    accs = {"full": [0.40, 0.42, 0.44], "no_noise": [0.38, 0.41, 0.41], "unsigned": [0.39, 0.41, 0.43]}
    specs, rows = [], []
    for variant, values in accs.items():
        for seed, acc in enumerate(values):
            spec = RunSpec(variant, seed, str(tmp_path / variant / f"seed{seed}"))
            os.makedirs(spec.out)
            result = {"private_test": {"accuracy": acc}, "public_test": {"accuracy": acc}, "epochs": 1, "history": []}
            (tmp_path / variant / f"seed{seed}" / "results.json").write_text(json.dumps(result))
            specs.append(spec)
            rows.append({"status": "done", "seconds": 1.0})
    md = summarize(str(tmp_path), specs, rows).splitlines()
    assert md[0].count("PrivateTest %") == 1 and "hold-out" not in md[0]  # no run had a hold-out split
    full, no_noise, unsigned = md[2], md[3], md[4]
    assert full == "| full | 3 | 42.00 ± 2.00 | - | - | - | - |"
    assert no_noise.startswith("| no_noise | 3 | 40.00 ± 1.73 | -2.00 | [-4.48, +0.48] | ")
    assert float(no_noise.split("|")[6]) > 0.05  # differences -2, -1, -3: not significant with 3 seeds
    assert float(no_noise.split("|")[7]) >= float(no_noise.split("|")[6])  # Holm never lowers a p
    # -1 on every seed: t = inf
    assert unsigned == "| unsigned | 3 | 41.00 ± 2.00 | -1.00 | [-1.00, -1.00] | < 0.001 | < 0.001 |"


def test_resume_and_crash_tolerance(tiny_csv, tmp_path):
    table = dict(VARIANTS, broken=({}, {"masks": "bogus"}))  # a run that crashes at model construction
    base = dict(TINY, data=tiny_csv, holdout=0.25, select_on="holdout")

    def run(table):
        return run_ablations(
            str(tmp_path),
            base,
            seeds=[0, 1],
            variants=["full", "no_noise", "broken"],
            jobs=2,
            variant_table=table,
            progress=False,
        )

    rows = run(table)
    status = {(r["variant"], r["seed"]): r["status"] for r in rows}
    assert status[("full", 0)] == "done" and status[("no_noise", 1)] == "done"
    assert status[("broken", 0)].startswith("failed")
    assert "masks must be one of" in (tmp_path / "broken" / "seed0" / "run.log").read_text()
    with open(tmp_path / "ablations.csv") as f:
        records = list(csv.DictReader(f))
    assert len(records) == 6 and {r["status"] for r in records} >= {"done"}
    md = (tmp_path / "ablations.md").read_text()
    assert "| full | 2 |" in md and "Failed runs" in md and "paired t-test" in md
    assert "hold-out % (mean ± std)" in md and "PrivateTest % (mean ± std)" in md
    assert all(r["holdout_acc"] != "" for r in records if r["status"] == "done")
    assert (tmp_path / "ablations.png").stat().st_size > 1000
    # resume: finished runs are skipped (results untouched), the failed one is tried again
    stamp = os.path.getmtime(tmp_path / "full" / "seed0" / "results.json")
    table["broken"] = ({}, {"masks": "random"})  # "fixed"
    rows = run(table)
    status = {(r["variant"], r["seed"]): r["status"] for r in rows}
    assert status[("full", 0)] == "done (skipped)" and status[("broken", 0)] == "done"
    assert os.path.getmtime(tmp_path / "full" / "seed0" / "results.json") == stamp
    cfg = json.loads((tmp_path / "broken" / "seed1" / "run_config.json").read_text())
    assert cfg["seed"] == 1 and cfg["model_config"]["masks"] == "random"


def test_cli_quick_smoke(tiny_csv, tmp_path):
    conf = tmp_path / "base.json"
    conf.write_text(json.dumps(TINY))
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "run_ablations.py"),
            "--quick",
            "--data",
            tiny_csv,
            "--out",
            str(tmp_path / "abl"),
            "--seeds",
            "0",
            "--variants",
            "full",
            "baseline",
            "--config",
            str(conf),
            "--jobs",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "2 runs finished, 0 failed" in proc.stdout
    listing = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "run_ablations.py"), "--list"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "random_masks" in listing.stdout and "rewired_masks" in listing.stdout
    log = (tmp_path / "abl" / "full" / "seed0" / "run.log").read_text()
    assert "scripts" not in json.dumps(
        json.loads((tmp_path / "abl" / "full" / "seed0" / "run_config.json").read_text())
    )
    assert "PrivateTest" in log
    with open(tmp_path / "abl" / "ablations.csv") as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert float(rows["full"]["train_cpu_seconds"]) > 0  # each run logs its CPU time


def test_cli_bad_input_is_one_error_line(tmp_path, capsys):
    from bionic_sparse.training.ablation import main

    assert main(["--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing.csv" in err[0]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_ctrl_c_is_one_line(tmp_path, monkeypatch, capsys):
    from bionic_sparse.training import ablation

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ablation, "run_ablations", interrupted)
    assert ablation.main(["--out", str(tmp_path / "o"), "--seeds", "0"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("interrupted:") and "--out" in err[0]


def test_fer_runs_script_makes_the_table(tiny_csv, tmp_path):
    conf = tmp_path / "base.json"
    conf.write_text(json.dumps(TINY))
    env = dict(os.environ, PYTHON=sys.executable, RUN_FLAGS="--quick --jobs 2")
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "fer_runs.sh"), tiny_csv, str(tmp_path / "fer"), str(conf), "0"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = (tmp_path / "fer" / "table.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert "| 0 | 1 |" in rows["full"] and "| 0 | 1 |" in rows["baseline"]  # seeds, epochs
    assert "| synthetic column, seed 0 |" in rows["full"] and "| none (dense layers) |" in rows["baseline"]
    assert (tmp_path / "fer" / "learning_curves.png").exists() and (
        tmp_path / "fer" / "confusion_best_full.png"
    ).exists()


def _fake_run(root, variant: str, seed: int, acc: float, history: list[dict], **splits: float) -> None:
    out = root / variant / f"seed{seed}"
    out.mkdir(parents=True)
    result = {"private_test": {"accuracy": acc}, "public_test": {"accuracy": acc}, "epochs": 1, "history": history}
    result.update({split: {"accuracy": value} for split, value in splits.items()})
    (out / "results.json").write_text(json.dumps(result))


def test_report_has_the_ten_crop_accuracy_beside_the_plain_one(tmp_path):
    """Runs that evaluated ten crops get a second block with its own paired test; the CSV also
    keeps the accuracy on the PrivateTest images that are not in Training."""
    from bionic_sparse.training.ablation import report

    for seed, (plain, tta) in enumerate([(0.60, 0.62), (0.62, 0.63), (0.61, 0.64)]):
        _fake_run(tmp_path, "full", seed, plain, [], private_test_tta=tta, private_test_unique=plain - 0.01)
        _fake_run(tmp_path, "no_noise", seed, plain - 0.01, [], private_test_tta=tta - 0.02)
    report(str(tmp_path), [0, 1, 2], ["full", "no_noise"])
    md = (tmp_path / "ablations.md").read_text().splitlines()
    assert md[0] == (
        "| variant | runs | PrivateTest % (mean ± std) | Δ vs full (points) | 95 % CI of Δ | paired t-test p"
        " | Holm p | PrivateTest ten-crop % (mean ± std) | Δ vs full (points) | 95 % CI of Δ | paired t-test p"
        " | Holm p |"
    )
    assert md[2] == "| full | 3 | 61.00 ± 1.00 | - | - | - | - | 63.00 ± 1.00 | - | - | - | - |"
    assert md[3] == (
        "| no_noise | 3 | 60.00 ± 1.00 | -1.00 | [-1.00, -1.00] | < 0.001 | < 0.001"
        " | 61.00 ± 1.00 | -2.00 | [-2.00, -2.00] | < 0.001 | < 0.001 |"
    )
    with open(tmp_path / "ablations.csv") as f:
        rows = {(r["variant"], r["seed"]): r for r in csv.DictReader(f)}
    assert float(rows[("full", "2")]["private_tta_acc"]) == 0.64
    assert float(rows[("full", "2")]["private_unique_acc"]) == pytest.approx(0.60)
    assert rows[("no_noise", "0")]["private_unique_acc"] == ""
    assert rows[("full", "0")]["train_cpu_seconds"] == ""  # no epochs logged CPU time


def test_report_names_a_malformed_results_file(tmp_path, capsys):
    from bionic_sparse.training.ablation import main

    (tmp_path / "full" / "seed0").mkdir(parents=True)
    (tmp_path / "full" / "seed0" / "results.json").write_text("{not json")
    assert main(["--report", "--out", str(tmp_path), "--seeds", "0", "--variants", "full"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "results.json is not valid JSON" in err[0]


def test_paired_stats_give_the_interval_and_holm_adjusted_p():
    """Δ over common seeds with its 95 % t-interval and paired p; Holm's step-down adjustment over
    the variants tested, so that a reader of 13 comparisons is not misled by one small p."""
    from scipy.stats import t as student_t
    from scipy.stats import ttest_rel

    from bionic_sparse.training.ablation import paired_stats

    full = {0: 60.0, 1: 61.0, 2: 62.0}
    up = {s: a + d for (s, a), d in zip(full.items(), [1.0, 2.0, 3.0], strict=True)}
    down = {s: a + d for (s, a), d in zip(full.items(), [-0.5, -0.4, -0.6], strict=True)}
    stats = paired_stats({"full": full, "up": up, "down": down, "one_seed": {1: 59.0}, "no_common": {5: 50.0}})
    half = student_t.ppf(0.975, 2) * 1.0 / 3**0.5
    assert stats["up"]["delta"] == pytest.approx(2.0)
    assert stats["up"]["ci"] == pytest.approx((2.0 - half, 2.0 + half))
    p_up = ttest_rel(list(up.values()), list(full.values())).pvalue
    p_down = ttest_rel(list(down.values()), list(full.values())).pvalue
    assert p_down < p_up
    assert stats["up"]["p"] == pytest.approx(p_up) and stats["down"]["p"] == pytest.approx(p_down)
    assert stats["down"]["holm"] == pytest.approx(2 * p_down)  # smallest of m = 2 tests: times 2
    assert stats["up"]["holm"] == pytest.approx(max(2 * p_down, p_up))  # then times 1, kept monotone
    assert stats["one_seed"]["delta"] == pytest.approx(-2.0) and stats["one_seed"]["ci"] is None
    assert stats["one_seed"]["p"] is None and stats["one_seed"]["holm"] is None
    assert stats["no_common"]["delta"] is None and stats["no_common"]["sd"] == 0.0
    assert stats["full"]["delta"] is None and stats["full"]["sd"] == pytest.approx(1.0)


def test_report_only_reads_the_folder_and_sizes_the_plasticity_terms(tmp_path, capsys):
    """``--report``: the report of a grid run over several calls (or of committed runs), running
    nothing; each run's probe columns give the size of the Hebbian and homeostatic terms."""
    from bionic_sparse.training.ablation import main

    probe = {"hebbian_over_opt_l1": 0.1, "hebbian_over_opt_l2": 0.3, "homeostatic_over_opt_l1": 0.02}
    _fake_run(tmp_path, "full", 0, 0.60, [{**probe, "seconds": 1.0}, {**probe, "seconds": 1.0}])
    _fake_run(tmp_path, "full", 1, 0.62, [{**probe, "seconds": 1.0}])
    no_hebbian = {"hebbian_over_opt_l1": 1e-7, "homeostatic_over_opt_l1": 0.03, "seconds": 1.0}
    _fake_run(tmp_path, "no_hebbian", 0, 0.59, [no_hebbian])
    _fake_run(tmp_path, "baseline", 0, 0.58, [{"seconds": 1.0}])  # no probe columns
    assert main(["--report", "--out", str(tmp_path), "--seeds", "0", "1"]) == 0
    out = capsys.readouterr().out
    assert "| full | 2 | 61.00 ± 1.41 | - | - |" in out
    assert "4 runs finished, 0 failed, 28 not run yet" in out  # 16 variants x 2 seeds
    assert "| full | 0.2 | 0.02 |" in out and "| no_hebbian | 1e-07 | 0.03 |" in out
    assert "| baseline |" not in out.split("Size of each plasticity term")[1]
    with open(tmp_path / "ablations.csv") as f:
        rows = {(r["variant"], r["seed"]): r for r in csv.DictReader(f)}
    assert rows[("full", "0")]["hebbian_over_opt"] == "0.2" and rows[("baseline", "0")]["hebbian_over_opt"] == ""
    assert rows[("unsigned", "0")]["status"] == "not run"
    assert (tmp_path / "ablations.png").exists()
    assert (tmp_path / "ablations_delta.png").exists()  # full and no_hebbian share seed 0
    assert "ablations_delta.png" in out
    assert not (tmp_path / "unsigned").exists()  # nothing was run


def test_report_lists_each_run_with_its_machine_and_revision(tmp_path):
    """A grid filled over several stretches may have run on different CPUs (the instruction set
    changes the bits): the per-run table names each run's machine, ISA and code revision."""
    from bionic_sparse.training.ablation import report

    epochs = [{"seconds": 60.0, "images_per_s": 100.0}, {"seconds": 180.0, "images_per_s": 200.0}]
    for seed, (cpu, isa) in enumerate([("Intel Xeon", "AVX512"), ("AMD EPYC", "AVX2")]):
        _fake_run(tmp_path, "full", seed, 0.6 + seed / 100, epochs, private_test_tta=0.62)
        result = json.loads((tmp_path / "full" / f"seed{seed}" / "results.json").read_text())
        result["versions"] = {"cpu": cpu, "cpu_capability": isa, "code_revision": "git:f24b1f1fecc79ae9"}
        (tmp_path / "full" / f"seed{seed}" / "results.json").write_text(json.dumps(result))
    _fake_run(tmp_path, "baseline", 0, 0.58, [])  # from before the versions were recorded
    report(str(tmp_path), [1, 0], ["baseline", "full"])
    md = (tmp_path / "ablations.md").read_text()
    runs = md.split("| run | PublicTest %")[1].splitlines()[2:]
    assert runs == [
        "| full, seed 0 | 60.00 | 60.00 | 62.00 | - | 4.0 | 175 | - | - | Intel Xeon, AVX512 | f24b1f1 |",
        "| baseline, seed 0 | 58.00 | 58.00 | - | - | 0.0 | - | - | - | -, - | - |",
        "| full, seed 1 | 61.00 | 61.00 | 62.00 | - | 4.0 | 175 | - | - | AMD EPYC, AVX2 | f24b1f1 |",
    ]
    with open(tmp_path / "ablations.csv") as f:
        rows = {(r["variant"], r["seed"]): r for r in csv.DictReader(f)}
    assert rows[("full", "1")]["cpu_capability"] == "AVX2" and rows[("baseline", "0")]["cpu"] == ""


def test_report_only_of_a_missing_folder_is_one_error_line(tmp_path, capsys):
    from bionic_sparse.training.ablation import main

    assert main(["--report", "--out", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "nowhere" in err[0]


def test_report_gives_no_test_for_a_model_that_predicts_one_class(tmp_path):
    """A quick run that predicts "happy" for every image sits at chance: its p-values would mean
    nothing, so the report marks them n/a, says why, and leaves it out of Holm's adjustment."""
    from bionic_sparse.training.ablation import report

    spread = [[5 if i == j else 1 for j in range(7)] for i in range(7)]
    one_class = [[0, 0, 0, 7, 0, 0, 0] for _ in range(7)]
    for seed in range(3):
        for variant, acc, confusion in (("full", 0.40 + seed / 100, spread), ("no_noise", 0.25, one_class),
                                        ("unsigned", 0.38 + seed / 50, spread)):  # fmt: skip
            _fake_run(tmp_path, variant, seed, acc, [])
            path = tmp_path / variant / f"seed{seed}" / "results.json"
            r = json.loads(path.read_text())
            r["private_test"]["confusion"] = confusion
            path.write_text(json.dumps(r))
    report(str(tmp_path), [0, 1, 2], ["full", "no_noise", "unsigned"])
    md = (tmp_path / "ablations.md").read_text()
    assert "| no_noise | 3 | 25.00 ± 0.00 | n/a | n/a | n/a | n/a |" in md
    assert "n/a: no_noise predicts a single class for every PrivateTest image" in md
    unsigned = next(line for line in md.splitlines() if line.startswith("| unsigned |"))
    assert unsigned.split("|")[6].strip() == unsigned.split("|")[7].strip()  # Holm over one test: p itself


def test_out_that_names_a_file_is_one_error_line(tmp_path, capsys):
    from bionic_sparse.training.ablation import main

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out, match in ((a_file, "is a file, not a folder"), (a_file / "grid", "no folder can be made inside it")):
        assert main(["--quick", "--out", str(out), "--seeds", "0", "--variants", "full"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --out ") and match in err[0]


def test_a_call_for_some_runs_keeps_the_folders_other_runs_in_the_report(tmp_path):
    """A grid filled over several calls (one variant or seed at a time): each call's report still
    lists every finished run in the folder, in the grid's order."""
    from bionic_sparse.training.ablation import report

    for seed in (0, 1):
        _fake_run(tmp_path, "full", seed, 0.60 + seed / 100, [])
        _fake_run(tmp_path, "baseline", seed, 0.59, [])
    _fake_run(tmp_path, "no_noise", 1, 0.58, [])
    report(str(tmp_path), [1], ["no_noise"])
    with open(tmp_path / "ablations.csv") as f:
        rows = [(r["variant"], r["seed"]) for r in csv.DictReader(f)]
    assert rows == [("full", "0"), ("full", "1"), ("no_noise", "1"), ("baseline", "0"), ("baseline", "1")]
