"""The multi-run report: run discovery in both folder layouts, the accuracy table, the figures."""

from __future__ import annotations

import json

from bionic_sparse.training.fer_table import main
from bionic_sparse.training.report import accuracy_table, collect_runs


def _result(seed: int, acc: float, tta: float | None, epochs: int = 3, cpu_seconds: float | None = 90.0) -> dict:
    confusion = [[5 if i == j else 1 for j in range(7)] for i in range(7)]
    r = {
        "seed": seed,
        "epochs": epochs,
        "device": "cpu",
        "best_selection_acc": acc,
        "data_md5": "0" * 32,
        "versions": {"cuda_device": None, "cpu": "Test CPU (2 cores)"},
        "private_test": {"accuracy": acc, "confusion": confusion},
        "public_test": {"accuracy": acc - 0.01, "confusion": confusion},
        "history": [
            {
                "epoch": e + 1,
                "public_acc": acc * (e + 1) / epochs,
                "train_acc": 0.5,
                "seconds": 60.0,
                "images_per_s": 100.0,
                **({} if cpu_seconds is None else {"cpu_seconds": cpu_seconds}),
            }
            for e in range(epochs)
        ],
    }
    if tta is not None:
        r["private_test_tta"] = {"accuracy": tta, "confusion": confusion}
    return r


def test_table_and_figures_from_both_folder_layouts(tmp_path, capsys):
    for seed, (a, b) in enumerate([(0.50, 0.40), (0.52, 0.42), (0.54, 0.44)]):
        for name, acc in (("full", a), ("baseline", b)):
            d = tmp_path / name / f"seed{seed}"  # the ablation runner's layout
            d.mkdir(parents=True)
            (d / "results.json").write_text(json.dumps(_result(seed, acc, acc + 0.02)))
    d = tmp_path / "extra-seed7"  # fer_runs' older layout
    d.mkdir()
    (d / "results.json").write_text(json.dumps(_result(7, 0.30, None, cpu_seconds=None)))  # before CPU time
    groups = collect_runs(str(tmp_path))
    assert [r["seed"] for r in groups["full"]] == [0, 1, 2] and len(groups["extra"]) == 1
    lines = accuracy_table(groups).splitlines()
    full = next(line for line in lines if line.startswith("| full |"))
    assert (
        "| 0,1,2 | 3 | 52.00 ± 2.00 | 54.00 ± 2.00 | - | 51.00 ± 2.00 | 3.0 | 4.5 | 100 | Test CPU (2 cores) |" in full
    )
    extra = next(line for line in lines if line.startswith("| extra |"))
    assert "| 30.00 ± 0.00 | - |" in extra  # no ten-crop column in that run
    assert "| 3.0 | - | 100 |" in extra  # nor CPU time
    assert main([str(tmp_path), "--out", str(tmp_path / "rep"), "--models", "full", "baseline"]) == 0
    for name in ("table.md", "learning_curves.png", "confusion_best_full.png", "confusion_best_baseline.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 100, name
    assert main([str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith("error: no results.json")


def test_the_table_names_every_machine_its_runs_used(tmp_path):
    """A table filled over several working stretches can mix machines: the device column lists each."""
    for seed, cpu in enumerate(["AMD EPYC (2 cores)", "Intel Xeon (2 cores)", "Intel Xeon (2 cores)"]):
        d = tmp_path / "baseline" / f"seed{seed}"
        d.mkdir(parents=True)
        r = _result(seed, 0.5, None)
        r["versions"]["cpu"] = cpu
        (d / "results.json").write_text(json.dumps(r))
    line = accuracy_table(collect_runs(str(tmp_path))).splitlines()[2]
    assert "| AMD EPYC (2 cores); Intel Xeon (2 cores) |" in line
