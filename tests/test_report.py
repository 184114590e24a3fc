"""The multi-run report: run discovery in both folder layouts, the accuracy table, the figures."""

from __future__ import annotations

import json

from bionic_sparse.training.fer_table import main
from bionic_sparse.training.report import (
    accuracy_table,
    collect_runs,
    image_level_tests,
    mcnemar_exact,
    split_incomparable,
)


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
    expected = "| 0,1,2 | 3 | 52.00 ± 2.00 | - | 54.00 ± 2.00 | - | 51.00 ± 2.00 | 3.0 | 4.5 | 100 | Test CPU"
    assert expected in full
    extra = next(line for line in lines if line.startswith("| extra |"))
    assert "| 30.00 ± 0.00 | - | - |" in extra  # no ten-crop column in that run
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


def _write_run(root, name: str, seed: int, acc: float, **over) -> dict:
    r = {**_result(seed, acc, None, epochs=over.pop("epochs", 3)), **over}
    d = root / name / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(r))
    return r


def test_fer_table_keeps_incomparable_runs_apart_and_says_so(tmp_path, capsys):
    """A quick 1-epoch run, a 1-epoch run on other data and a 3-epoch run in one folder: three rows,
    not one mean ± std, and a note naming what differs."""
    _write_run(tmp_path, "runs", 0, 0.20, epochs=1, config={"quick": True, "epochs": 1})
    _write_run(tmp_path, "runs", 1, 0.22, epochs=1, data_md5="3b75e369" + "0" * 24, config={"epochs": 1})
    _write_run(tmp_path, "runs", 2, 0.30, epochs=3, config={"epochs": 3})
    assert main([str(tmp_path), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| runs [")]
    assert len(rows) == 3, out
    assert "note: the runs of 'runs' are not comparable (they differ in" in out and "epochs" in out
    assert not any("± 8." in row for row in rows)  # nothing pooled
    _write_run(tmp_path, "same", 0, 0.5)
    _write_run(tmp_path, "same", 1, 0.6)  # comparable: one row
    groups, notes = split_incomparable(collect_runs(str(tmp_path)))
    assert [r["seed"] for r in groups["same"]] == [0, 1] and len(notes) == 1


def test_image_level_tests_from_predictions(tmp_path, capsys):
    """McNemar per seed from the discordant images and a paired bootstrap over seeds and images,
    from each run's predictions.npz; the same numbers by hand."""
    import numpy as np

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 500).astype(np.uint8)
    for seed in (0, 1):
        for name, p_right in (("full", 0.7), ("baseline", 0.6)):
            right = rng.random(500) < p_right
            pred = np.where(right, labels, (labels + 1) % 7).astype(np.uint8)
            r = _write_run(tmp_path, name, seed, float(right.mean()))
            np.savez_compressed(
                tmp_path / name / f"seed{seed}" / "predictions.npz", private_test=pred, private_test_labels=labels
            )
            r["_pred"] = pred
    groups = collect_runs(str(tmp_path))
    text = image_level_tests(groups, [("full", "baseline")])
    a = [np.load(tmp_path / "full" / f"seed{s}" / "predictions.npz")["private_test"] == labels for s in (0, 1)]
    b = [np.load(tmp_path / "baseline" / f"seed{s}" / "predictions.npz")["private_test"] == labels for s in (0, 1)]
    a_only, b_only = int((a[0] & ~b[0]).sum()), int((~a[0] & b[0]).sum())
    assert f"| {a_only} | {b_only} | {mcnemar_exact(a_only, b_only):.3g} |" in text
    mean = 100 * np.mean([x.mean() - y.mean() for x, y in zip(a, b, strict=True)])
    assert f"full − baseline, PrivateTest, per image** (2 seeds with predictions of both): {mean:+.2f} points" in text
    assert mcnemar_exact(10, 0) < 0.01 and mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert main([str(tmp_path)]) == 0
    assert "## Image-level tests" in (tmp_path / "table.md").read_text()
    assert main([str(tmp_path), "--compare", "full", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: --compare: no runs named 'nope'")


def test_fer_table_out_that_names_a_file_is_one_error_line(tmp_path, capsys):
    _write_run(tmp_path, "full", 0, 0.5)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main([str(tmp_path), "--out", str(a_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out ") and "is a file" in err[0]


def test_a_field_added_later_at_its_default_does_not_split_a_row(tmp_path):
    """A run written before ``plasticity_schedule`` existed did what its default does: it pools
    with a newer run that records ``"constant"``, and not with one that records ``"lr"``."""
    _write_run(tmp_path, "m", 0, 0.5, config={"epochs": 30})
    _write_run(tmp_path, "m", 1, 0.6, config={"epochs": 30, "plasticity_schedule": "constant"})
    groups, notes = split_incomparable(collect_runs(str(tmp_path)))
    assert [r["seed"] for r in groups["m"]] == [0, 1] and not notes
    _write_run(tmp_path, "m", 2, 0.6, config={"epochs": 30, "plasticity_schedule": "lr"})
    groups, notes = split_incomparable(collect_runs(str(tmp_path)))
    assert len(groups) == 2 and "plasticity_schedule" in notes[0]
