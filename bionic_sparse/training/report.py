"""What a run leaves for people to read: ``metrics.csv``, learning curves and confusion matrices,
and for a folder of runs the accuracy table (mean ± std over seeds) and the comparison figures.

Run folders are named ``<variant>/seed<k>`` (the ablation runner) or ``<model>-seed<k>``;
both are found by :func:`collect_runs`.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import statistics

from ..data import CLASSES

__all__ = ["write_metrics", "plot_run", "collect_runs", "accuracy_table", "plot_comparison", "plot_confusion"]


def write_metrics(path: str, history: list[dict]) -> None:
    """One row per epoch, written atomically."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        fields = list(dict.fromkeys(k for row in history for k in row))  # rows of older runs may lack columns
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(history)
    os.replace(tmp, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# how the figures name the table's two rows (run folders keep the variant names)
DISPLAY_NAMES = {"full": "BioNIC (all biology)", "baseline": "conventional baseline"}


def _integer_epochs(ax, epochs) -> None:
    from matplotlib.ticker import MaxNLocator

    lo, hi = int(min(epochs)), int(max(epochs))
    if hi - lo < 15:  # MaxNLocator falls back to fractions over short ranges
        ax.set_xticks(range(lo, hi + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(lo - 0.5, hi + 0.5)


def plot_confusion(path: str, confusion: list[list[int]], title: str) -> None:
    """Row-normalised confusion matrix ``[true, predicted]`` with the value in each cell."""
    import numpy as np

    plt = _pyplot()
    cm = np.asarray(confusion, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    for i in range(len(CLASSES)):
        for j in range(len(CLASSES)):
            colour = "w" if norm[i, j] > 0.5 else "k"
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_run(out: str, history: list[dict], confusion: list[list[int]]) -> None:
    """``confusion_matrix.png`` (PrivateTest) and ``learning_curves.png`` of one run."""
    plot_confusion(os.path.join(out, "confusion_matrix.png"), confusion, "PrivateTest confusion (row-normalised)")
    if not history:
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ep = [h["epoch"] for h in history]
    curves = [("train_acc", "train (augmented)"), ("public_acc", "PublicTest"), ("holdout_acc", "hold-out")]
    for key, label in curves:
        if key in history[0]:
            ax.plot(ep, [h[key] for h in history], marker="o", label=label)  # markers: a 1-epoch run shows
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    _integer_epochs(ax, ep)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "learning_curves.png"), dpi=130)
    plt.close(fig)


def collect_runs(root: str) -> dict[str, list[dict]]:
    """``results.json`` of every run under ``root``, grouped by model/variant name, seed order."""
    groups: dict[str, list[dict]] = {}
    paths = glob.glob(os.path.join(root, "*", "results.json")) + glob.glob(os.path.join(root, "*", "*", "results.json"))
    for path in sorted(paths):
        run_dir = os.path.dirname(path)
        name = os.path.basename(run_dir)
        name = name.rsplit("-seed", 1)[0] if "-seed" in name else os.path.basename(os.path.dirname(run_dir))
        with open(path) as f:
            r = json.load(f)
        r["_dir"] = run_dir
        groups.setdefault(name, []).append(r)
    for runs in groups.values():
        runs.sort(key=lambda r: r["seed"])
    return groups


def training_cpu_seconds(history: list[dict]) -> float | None:
    """CPU seconds of a run's training epochs; ``None`` for runs from before CPU time was logged."""
    if not history or not all("cpu_seconds" in h for h in history):
        return None
    return sum(h["cpu_seconds"] for h in history)


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def accuracy_table(groups: dict[str, list[dict]]) -> str:
    """Markdown: PrivateTest plain and ten-crop (mean ± sample std over seeds), PrivateTest without
    the exact copies of training images (runs that recorded it), PublicTest, budget, wall and CPU
    time of the training epochs (CPU time: the runs that logged it), device and training images/s
    per model."""
    lines = [
        "| model | seeds | epochs | PrivateTest % | PrivateTest % ten-crop | PrivateTest % not in Training "
        "| PublicTest % | train min / run | CPU min / run | img/s | device | data md5 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in groups.items():

        def acc(key: str, runs: list[dict] = runs) -> list[float]:
            return [100 * r[key]["accuracy"] for r in runs if key in r]

        minutes = [sum(h["seconds"] for h in r["history"]) / 60 for r in runs]
        cpu = [training_cpu_seconds(r["history"]) for r in runs]
        cpu_minutes = [c / 60 for c in cpu if c is not None]
        ips = [statistics.mean(h["images_per_s"] for h in r["history"]) for r in runs]
        # every machine the runs used (a table filled over several working stretches can mix them)
        devices = dict.fromkeys(
            r.get("versions", {}).get("cuda_device") or r.get("versions", {}).get("cpu") or r["device"] for r in runs
        )
        device = "; ".join(devices)
        md5s = sorted({str(r.get("data_md5")) for r in runs})
        lines.append(
            f"| {name} | {','.join(str(r['seed']) for r in runs)} | {runs[0]['epochs']} "
            f"| {_mean_sd(acc('private_test'))} | {_mean_sd(acc('private_test_tta'))} "
            f"| {_mean_sd(acc('private_test_unique'))} | {_mean_sd(acc('public_test'))} "
            f"| {statistics.mean(minutes):.1f} | {f'{statistics.mean(cpu_minutes):.1f}' if cpu_minutes else '-'} "
            f"| {statistics.mean(ips):.0f} | {device} | {', '.join(md5s)} |"
        )
    return "\n".join(lines)


def plot_comparison(groups: dict[str, list[dict]], out: str, models: tuple[str, ...] | None = None) -> list[str]:
    """``learning_curves.png``: PublicTest and train accuracy per epoch, mean ± band (min..max)
    over seeds, per model; ``confusion_best_<model>.png``: the PrivateTest confusion matrix of the
    run with the best selection accuracy of each model. Returns the files written."""
    import numpy as np

    plt = _pyplot()
    names = [n for n in (models or tuple(groups)) if n in groups]
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for i, name in enumerate(names):
        runs = groups[name]
        n_ep = min(len(r["history"]) for r in runs)
        ep = np.arange(1, n_ep + 1)
        for ax, key in zip(axes, ("public_acc", "train_acc"), strict=True):
            vals = 100 * np.array([[h[key] for h in r["history"][:n_ep]] for r in runs])
            colour = f"C{i}"
            label = f"{DISPLAY_NAMES.get(name, name)} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
            ax.plot(ep, vals.mean(0), marker="o", color=colour, label=label)
            ax.fill_between(ep, vals.min(0), vals.max(0), color=colour, alpha=0.2)
    for ax, title in zip(axes, ("PublicTest accuracy", "training accuracy (augmented)"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel("%")
        _integer_epochs(ax, ep)
        ax.legend()
    fig.suptitle("mean over seeds, band: min..max")
    fig.tight_layout()
    path = os.path.join(out, "learning_curves.png")
    fig.savefig(path, dpi=130)
    plt.close(fig)
    written.append(path)
    for name in names:
        best = max(groups[name], key=lambda r: r["best_selection_acc"])
        key = "private_test_tta" if "private_test_tta" in best else "private_test"
        path = os.path.join(out, f"confusion_best_{name}.png")
        acc = 100 * best[key]["accuracy"]
        label = "ten-crop " if key.endswith("_tta") else ""
        title = f"{DISPLAY_NAMES.get(name, name)}, seed {best['seed']}\nPrivateTest {label}{acc:.2f} %"
        plot_confusion(path, best[key]["confusion"], title)
        written.append(path)
    return written
