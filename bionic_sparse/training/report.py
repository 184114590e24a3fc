"""What a run leaves for people to read: ``metrics.csv``, learning curves and confusion matrices,
and for a folder of runs the accuracy table (mean ± std over seeds) and the comparison figures.

Run folders are named ``<variant>/seed<k>`` (the ablation runner) or ``<model>-seed<k>``;
both are found by :func:`collect_runs`.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import statistics

from ..data import CLASSES

__all__ = [
    "write_metrics",
    "plot_run",
    "collect_runs",
    "split_incomparable",
    "accuracy_table",
    "image_level_tests",
    "plot_comparison",
    "plot_confusion",
]


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


# what may differ between runs that one row of a table pools: the seed, where it ran, and code
# revisions that do not change what training computes (each is shown in the experiment's README)
POOLABLE_FIELDS = ("seed", "out", "resume", "overwrite", "allow_code_change", "tensorboard", "device",
                   "code_revision", "bionic_sparse", "data")  # fmt: skip


def comparability_key(run: dict) -> dict:
    """What must be equal for two runs to share a row: the run's identity (its config with the
    data's md5, or for runs from before identities the config) without :data:`POOLABLE_FIELDS`,
    and the epochs it ran."""
    from .trainer import _with_added_defaults  # (trainer imports this module)

    # a field added after a run was written is, at its default, what that run did
    ident = _with_added_defaults(json.loads(json.dumps(run.get("identity") or run.get("config") or {})))
    for name in POOLABLE_FIELDS:
        ident.pop(name, None)
    ident["epochs"] = run.get("epochs")
    ident["data_md5"] = run.get("data_md5")
    ident.setdefault("quick", (run.get("config") or {}).get("quick", False))
    return ident


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def split_incomparable(groups: dict[str, list[dict]]) -> tuple[dict[str, list[dict]], list[str]]:
    """Split every group whose runs differ in what :func:`comparability_key` compares into one group
    per kind, named by the fields that differ (``runs [epochs=1, data_md5=3b75e369]``); returns the
    groups and one note per split group saying what was kept apart."""
    out: dict[str, list[dict]] = {}
    notes = []
    for name, runs in groups.items():
        kinds: dict[str, list[dict]] = {}
        for r in runs:
            kinds.setdefault(json.dumps(comparability_key(r), sort_keys=True), []).append(r)
        if len(kinds) == 1:
            out[name] = runs
            continue
        flats = [_flat(json.loads(k)) for k in kinds]
        differ = [f for f in dict.fromkeys(f for fl in flats for f in fl) if len({repr(fl.get(f)) for fl in flats}) > 1]
        for flat, members in zip(flats, kinds.values(), strict=True):
            label = ", ".join(f"{f}={str(flat.get(f))[:8] if f.endswith('md5') else flat.get(f)}" for f in differ)
            out[f"{name} [{label}]"] = members
        notes.append(
            f"note: the runs of {name!r} are not comparable (they differ in {', '.join(differ)}), so they "
            f"are kept apart in {len(kinds)} rows instead of one mean ± std"
        )
    return out, notes


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


def connectome_label(run: dict) -> str:
    """Which wiring a run's laminar layers had: ``synthetic column, seed 0``, a control of it
    (``random masks of the synthetic column, seed 0``) or ``none (dense layers)``."""
    cfg = run.get("config")
    if not cfg:
        return "-"
    mc = cfg.get("model_config") or {}
    masks = mc.get("masks", "connectome")
    if cfg.get("model") == "baseline" or masks == "none":
        return "none (dense layers)"
    source, seed = mc.get("connectome", "synthetic"), mc.get("connectome_seed", 0)
    if cfg.get("model") == "volume" and source == "volume":
        base = f"synthetic volume ({mc.get('n_neurons', 82_247):,} neurons), seed {seed}"
    elif source == "synthetic":
        base = f"synthetic column, seed {seed}"
    else:
        base = f"{source}, seed {seed}"
    if masks == "connectome":
        return base
    if masks == "dense":
        return f"all-to-all (dense masks; {base} signs)"
    return f"{masks.replace('_', ' ')} of the {base}"


_COUNTS: dict[str, dict] = {}


def parameter_counts_of(run: dict) -> dict | None:
    """``results.json``'s parameter counts (:func:`bionic_sparse.nn.parameter_counts`); for runs
    written before they were recorded, counted on the model rebuilt from the run's config."""
    if "parameters" in run:
        return run["parameters"]
    cfg = run.get("config")
    if not cfg:
        return None
    key = json.dumps(cfg.get("model_config"), sort_keys=True) + str(cfg.get("model"))
    if key not in _COUNTS:
        from ..nn import parameter_counts
        from .config import TrainConfig
        from .trainer import build_model

        _COUNTS[key] = parameter_counts(build_model(TrainConfig.from_dict(cfg)))
    return _COUNTS[key]


def _millions(n: float) -> str:
    return f"{n / 1e6:.2f} M"


def test_set_half_width(runs: list[dict], key: str = "private_test") -> float | None:
    """Half-width (percentage points) of an approximate 95 % interval of a model's mean accuracy that
    counts both sources of error: the seeds (``sd^2 / k``) and the test set's own sampling
    (``p (1 - p) / n``: every seed is scored on the same images, so this part does not average out)."""
    accs = [r[key]["accuracy"] for r in runs if key in r]
    n = runs[0].get(key, {}).get("n")
    if not accs or not n:
        return None
    p = statistics.mean(accs)
    var_seeds = statistics.variance(accs) / len(accs) if len(accs) > 1 else 0.0
    return 100 * 1.96 * math.sqrt(var_seeds + p * (1 - p) / n)


def accuracy_table(groups: dict[str, list[dict]]) -> str:
    """Markdown: PrivateTest plain and ten-crop (mean ± sample std over seeds), PrivateTest without
    the exact copies of training images (runs that recorded it), PublicTest, budget, wall and CPU
    time of the training epochs (CPU time: the runs that logged it), device and training images/s
    per model."""
    lines = [
        "| model | connectome | effective parameters (stored) | seeds | epochs | PrivateTest % "
        "| ± 95 % (seeds + test set) | PrivateTest % ten-crop | PrivateTest % not in Training "
        "| PublicTest % | train min / run | CPU min / run | img/s | device | data md5 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
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
        counts = parameter_counts_of(runs[0])
        params = f"{_millions(counts['effective'])} ({_millions(counts['stored'])})" if counts else "-"
        half = test_set_half_width(runs)
        lines.append(
            f"| {name} | {connectome_label(runs[0])} | {params} | {','.join(str(r['seed']) for r in runs)} "
            f"| {runs[0]['epochs']} | {_mean_sd(acc('private_test'))} | {'-' if half is None else f'± {half:.2f}'} "
            f"| {_mean_sd(acc('private_test_tta'))} "
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
    wirings = sorted({connectome_label(groups[n][0]) for n in names} - {"none (dense layers)", "-"})
    fig.suptitle("mean over seeds, band: min..max" + (f"; connectome: {'; '.join(wirings)}" if wirings else ""))
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
        wiring = connectome_label(best)
        wiring = "" if wiring in ("-", "none (dense layers)") else f"\n{wiring}"
        title = f"{DISPLAY_NAMES.get(name, name)}, seed {best['seed']}{wiring}\nPrivateTest {label}{acc:.2f} %"
        plot_confusion(path, best[key]["confusion"], title)
        written.append(path)
    return written


def _correct(run: dict, key: str):
    """Bool ``[n]``: which images of ``key`` (``private_test``, ``private_test_tta``, ...) the run got
    right, from its ``predictions.npz``; ``None`` when the run has none."""
    import numpy as np

    path = os.path.join(run["_dir"], "predictions.npz")
    if not os.path.exists(path):
        return None
    with np.load(path) as z:
        if key not in z:
            return None
        return z[key] == z[key.removesuffix("_tta") + "_labels"]


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (binomial test at 1/2)."""
    from scipy.stats import binomtest

    n = a_only + b_only
    return 1.0 if n == 0 else float(binomtest(a_only, n, 0.5).pvalue)


def paired_bootstrap(diff, replicates: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean accuracy difference (points) and its 95 % percentile interval from ``diff[S, n]``
    (per seed and image: correct_a - correct_b), resampling seeds and images (the same images for
    both models: the test is paired)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n_seeds, n = diff.shape
    stats = np.empty(replicates)
    for i in range(replicates):
        seeds = rng.integers(0, n_seeds, n_seeds)
        images = rng.integers(0, n, n)
        stats[i] = diff[seeds][:, images].mean()
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return 100 * float(diff.mean()), 100 * float(lo), 100 * float(hi)


def image_level_tests(groups: dict[str, list[dict]], pairs: list[tuple[str, str]]) -> str:
    """Markdown: for each pair ``(a, b)`` of groups, over the seeds where both have per-image
    predictions: per seed the accuracies, the discordant images and an exact McNemar test; over
    seeds and images a paired bootstrap interval of ``a - b`` (PrivateTest, plain and ten-crop)."""
    import numpy as np

    lines = []
    for a, b in pairs:
        by_seed = {r["seed"]: r for r in groups.get(b, [])}
        common = [(ra, by_seed[ra["seed"]]) for ra in groups.get(a, []) if ra["seed"] in by_seed]
        for key in ("private_test", "private_test_tta"):
            rows, diffs = [], []
            for ra, rb in common:
                ca, cb = _correct(ra, key), _correct(rb, key)
                if ca is None or cb is None:
                    continue
                a_only, b_only = int((ca & ~cb).sum()), int((~ca & cb).sum())
                diffs.append(ca.astype(np.int8) - cb.astype(np.int8))
                acc_a, acc_b = 100 * ca.mean(), 100 * cb.mean()
                rows.append(
                    f"| {ra['seed']} | {acc_a:.2f} | {acc_b:.2f} | {acc_a - acc_b:+.2f} "
                    f"| {a_only} | {b_only} | {mcnemar_exact(a_only, b_only):.3g} |"
                )
            if not rows:
                continue
            mean, lo, hi = paired_bootstrap(np.stack(diffs))
            split = "PrivateTest" + (" ten-crop" if key.endswith("_tta") else "")
            lines += [
                "",
                f"**{a} − {b}, {split}, per image** ({len(rows)} seed{'s' if len(rows) > 1 else ''} with predictions "
                f"of both): {mean:+.2f} points, 95 % paired bootstrap interval over seeds and images "
                f"[{lo:+.2f}, {hi:+.2f}]",
                "",
                f"| seed | {a} % | {b} % | difference | only {a} right | only {b} right | McNemar exact p |",
                "|---|---|---|---|---|---|---|",
                *rows,
            ]
    return "\n".join(lines)
