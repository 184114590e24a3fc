"""Ablation runner: the BioNIC ablation grid x seeds, each run a trainer run in its own folder.

* Resumable: a run whose ``results.json`` exists is skipped; a failed or interrupted run is run
  again on the next call.
* Isolated: every run is a separate ``python -m bionic_sparse.training`` process, so a crash (or
  OOM) of one run is recorded as ``failed`` with its log and the others go on.
* Parallel: ``jobs`` runs at a time; with CUDA GPUs the runs are spread over them
  (``CUDA_VISIBLE_DEVICES``), otherwise they share the CPU: each run gets ``cores // jobs``
  threads and ``OMP_WAIT_POLICY=PASSIVE`` (:func:`bionic_sparse.runtime.child_env`; the user's
  ``OMP_NUM_THREADS`` / ``OMP_WAIT_POLICY`` win).
* Report: ``ablations.csv`` (one row per run), ``ablations.md`` (mean ± std per variant and the
  difference to the full model over the seeds both have, with its 95 % CI, a paired t-test and
  the test's p adjusted for the number of variants (Holm); then one row per
  run with its machine and code revision), ``ablations.png`` (accuracy bars, seeds as dots) and
  ``ablations_delta.png`` (each variant minus the full model, paired by seed).

CLI: ``python -m bionic_sparse.training.ablation`` or ``bionic-ablations`` (:func:`main`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..runtime import child_env, invocation
from .config import load_config_file
from .report import training_cpu_seconds

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

__all__ = ["VARIANTS", "RunSpec", "run_ablations", "report", "summarize", "plasticity_sizes", "paired_stats",
           "predicts_one_class", "main"]  # fmt: skip

# name -> (overrides of TrainConfig, overrides of BioNICConfig); the grid of design/bionic.md.
VARIANTS: dict[str, tuple[dict, dict]] = {
    "full": ({}, {}),
    # the connectome masks alone: no Dale's law, no synaptic noise, no Hebbian, no homeostasis
    "no_biology": ({}, {"signed": False, "noise_sigma": 0.0, "hebbian_eta": 0.0, "homeostasis_rate": 0.0}),
    "dense_masks": ({}, {"masks": "dense"}),
    "random_masks": ({}, {"masks": "random"}),
    "rewired_masks": ({}, {"masks": "rewired"}),
    "shuffled_laminae": ({}, {"masks": "shuffled_laminae"}),
    "unsigned": ({}, {"signed": False}),
    "no_inhibition": ({}, {"g_inh": 0.0}),
    "no_hebbian": ({}, {"hebbian_eta": 0.0}),
    "no_homeostasis": ({}, {"homeostasis_rate": 0.0}),
    "no_layernorm": ({}, {"layernorm": False}),
    "no_augmentation": ({"augment": False}, {}),
    "no_noise": ({}, {"noise_sigma": 0.0}),
    "no_conv_front_end": ({}, {"conv_front_end": False}),
    "baseline": ({"model": "baseline"}, {}),
    # the Hebbian and homeostatic rates scaled by the learning-rate schedule (warm-up, cosine), so
    # that plasticity stops when the optimiser does; the question of issue #32's plasticity section
    "plasticity_lr": ({"plasticity_schedule": "lr"}, {}),
}


@dataclass
class RunSpec:
    variant: str
    seed: int
    out: str

    @property
    def done(self) -> bool:
        return os.path.exists(os.path.join(self.out, "results.json"))


def _run_config(base: dict, variant: str, seed: int, out: str, variants: dict) -> dict:
    train_over, model_over = variants[variant]
    cfg = json.loads(json.dumps(base))  # deep copy
    cfg.update(train_over)
    cfg["model_config"] = {**cfg.get("model_config", {}), **model_over}
    cfg.update(seed=seed, out=out, resume=True)
    return cfg


def _launch(spec: RunSpec, cfg: dict, env: dict) -> dict:
    os.makedirs(spec.out, exist_ok=True)
    with open(os.path.join(spec.out, "run_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    t0 = time.perf_counter()
    with open(os.path.join(spec.out, "run.log"), "w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "bionic_sparse.training", "--config", os.path.join(spec.out, "run_config.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    status = "done" if proc.returncode == 0 and spec.done else f"failed (exit {proc.returncode})"
    return {"variant": spec.variant, "seed": spec.seed, "status": status, "seconds": time.perf_counter() - t0}


def _with_finished(out: str, specs: list[RunSpec], rows: list[dict], table: dict) -> tuple[list[RunSpec], list[dict]]:
    """``specs``/``rows`` plus every finished run already in ``out`` that they do not name, so that
    a call for some variants or seeds never drops the others' rows from the folder's report."""
    named = {(sp.variant, sp.seed) for sp in specs}
    found = []
    for variant in table:
        folder = os.path.join(out, variant)
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if not (name.startswith("seed") and name[4:].isdigit()):
                continue
            spec = RunSpec(variant, int(name[4:]), os.path.join(folder, name))
            if spec.done and (variant, spec.seed) not in named:
                found.append(spec)
    order = {v: i for i, v in enumerate(table)}
    merged = sorted(
        zip(
            [*specs, *found],
            [
                *rows,
                *(
                    {"variant": sp.variant, "seed": sp.seed, "status": "done (skipped)", "seconds": None}
                    for sp in found
                ),
            ],
            strict=True,
        ),
        key=lambda pair: (order.get(pair[0].variant, len(order)), pair[0].seed),
    )
    return [sp for sp, _ in merged], [row for _, row in merged]


def run_ablations(
    out: str,
    base: dict,
    seeds: list[int],
    variants: list[str] | None = None,
    jobs: int = 1,
    variant_table: dict | None = None,
    progress: bool = True,
) -> list[dict]:
    """Run (or resume) the grid; returns one status row per run and writes the report."""
    table = variant_table or VARIANTS
    names = variants or list(table)
    unknown = [v for v in names if v not in table]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {list(table)}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    specs = [RunSpec(v, s, os.path.join(out, v, f"seed{s}")) for v in names for s in seeds]
    todo = [sp for sp in specs if not sp.done]
    statuses = {
        (sp.variant, sp.seed): {"variant": sp.variant, "seed": sp.seed, "status": "done (skipped)", "seconds": None}
        for sp in specs
        if sp.done
    }
    n_gpus = _gpu_count()

    def work(i_spec):
        i, spec = i_spec
        # run.log is a file, not a terminal: one progress line every 30 s instead of every step;
        # cores / jobs threads per run and passive OpenMP waiting, unless the user set them
        env = {"TQDM_MININTERVAL": "30", **child_env(jobs), "PYTHONUNBUFFERED": "1"}
        # the child imports the bionic_sparse this process runs (a checkout or an install)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p)
        if n_gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(i % n_gpus)
        return _launch(spec, _run_config(base, spec.variant, spec.seed, spec.out, table), env)

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    with ThreadPoolExecutor(jobs) as pool:
        it = pool.map(work, enumerate(todo))
        if tqdm is not None and progress:
            it = tqdm(it, total=len(todo), desc="ablation runs")
        for row in it:
            statuses[(row["variant"], row["seed"])] = row
    rows = [statuses[(sp.variant, sp.seed)] for sp in specs]
    summarize(out, *_with_finished(out, specs, rows, table))
    return rows


def report(out: str, seeds: list[int], variants: list[str] | None = None) -> list[dict]:
    """The report of the runs already in ``out`` (a grid run over several calls, a folder of
    committed runs), running nothing: finished runs are read, the others listed as ``not run``."""
    names = variants or list(VARIANTS)
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    if not os.path.isdir(out):
        raise FileNotFoundError(f"--out {out!r} is not a folder of runs")
    specs = [RunSpec(v, s, os.path.join(out, v, f"seed{s}")) for v in names for s in seeds]
    rows = [
        {"variant": sp.variant, "seed": sp.seed, "status": "done" if sp.done else "not run", "seconds": None}
        for sp in specs
    ]
    summarize(out, *_with_finished(out, specs, rows, VARIANTS))
    return rows


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # pragma: no cover
        return 0


# result split -> (csv column, label); the report has one block per metric any run produced
METRICS = {
    "holdout": ("holdout_acc", "hold-out %"),
    "private_test": ("private_acc", "PrivateTest %"),
    "private_test_tta": ("private_tta_acc", "PrivateTest ten-crop %"),  # same checkpoint, test-time crops
}


def summarize(out: str, specs: list[RunSpec], rows: list[dict]) -> str:
    """Write ablations.csv / .md / .png from the run folders; returns the markdown.

    Metrics: PrivateTest accuracy, its ten-crop accuracy when the runs evaluated one, and the
    accuracy on the hold-out part of Training when the runs used ``holdout`` > 0 (in-distribution
    when the test images differ from the training ones).
    """
    records = []
    for spec, row in zip(specs, rows, strict=True):
        rec = {
            "variant": spec.variant,
            "seed": spec.seed,
            "status": row["status"],
            "private_acc": "",
            "public_acc": "",
            "holdout_acc": "",
            "private_tta_acc": "",
            "private_unique_acc": "",  # PrivateTest images with no exact duplicate in Training
            "epochs": "",
            "wall_seconds": "" if row["seconds"] is None else f"{row['seconds']:.1f}",  # this call's process
            "train_seconds": "",  # the run's training epochs, from its results.json
            "train_cpu_seconds": "",  # their CPU time (runs that logged it)
            "images_per_s": "",  # training throughput, time-weighted over the epochs
            "cpu": "",  # the machine and the instruction set torch's kernels used: both change the bits
            "cpu_capability": "",
            "code_revision": "",
            "dir": spec.out,
            "single_class": "",  # the run predicts one class for every PrivateTest image (chance level)
        }
        if spec.done:
            path = os.path.join(spec.out, "results.json")
            with open(path) as f:
                try:
                    r = json.load(f)
                except json.JSONDecodeError as e:  # a run cut off while writing, or a hand edit
                    raise ValueError(f"{path} is not valid JSON ({e}); run that seed again or remove it") from None
            cpu_seconds = training_cpu_seconds(r["history"])
            rec.update(
                private_acc=r["private_test"]["accuracy"],
                public_acc=r["public_test"]["accuracy"],
                holdout_acc=r["holdout"]["accuracy"] if "holdout" in r else "",
                private_tta_acc=r["private_test_tta"]["accuracy"] if "private_test_tta" in r else "",
                private_unique_acc=r["private_test_unique"]["accuracy"] if "private_test_unique" in r else "",
                epochs=r["epochs"],
                train_seconds=f"{sum(h['seconds'] for h in r['history']):.1f}",
                train_cpu_seconds="" if cpu_seconds is None else f"{cpu_seconds:.1f}",
                images_per_s=_images_per_s(r["history"]),
                cpu=r.get("versions", {}).get("cpu", ""),
                cpu_capability=r.get("versions", {}).get("cpu_capability", ""),
                code_revision=r.get("versions", {}).get("code_revision", ""),
                single_class=_one_class(r["private_test"]),
            )
        rec.update(plasticity_sizes(r["history"] if spec.done else []))
        records.append(rec)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "ablations.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]) if records else ["variant"])
        w.writeheader()
        w.writerows(records)

    variants = list(dict.fromkeys(r["variant"] for r in records))
    per_metric: dict[str, dict[str, dict[int, float]]] = {}
    for split, (column, _) in METRICS.items():
        acc: dict[str, dict[int, float]] = {}
        for rec in records:
            if rec[column] != "":
                acc.setdefault(rec["variant"], {})[rec["seed"]] = 100 * float(rec[column])
        if acc:
            per_metric[split] = acc
    header = "| variant | runs |"
    rule = "|---|---|"
    for split in per_metric:
        label = METRICS[split][1]
        header += f" {label} (mean ± std) | Δ vs full (points) | 95 % CI of Δ | paired t-test p | Holm p |"
        rule += "---|---|---|---|---|"
    lines = [header, rule]
    # a model that predicts one class is at chance: a p-value about it says nothing
    one_class = {rec["variant"] for rec in records if rec["single_class"] is True}
    stats = {split: paired_stats(acc, exclude=one_class) for split, acc in per_metric.items()}
    for variant in variants:
        runs = max((len(acc.get(variant, {})) for acc in per_metric.values()), default=0)
        cells = [variant, str(runs)]
        for split in per_metric:
            cells += _stats_cells(stats[split].get(variant))
        lines.append("| " + " | ".join(cells) + " |")
    if one_class:
        lines += [
            "",
            f"n/a: {', '.join(sorted(one_class))} predict{'s' if len(one_class) == 1 else ''} a single class for every "
            "PrivateTest image in at least one run (chance level), so no test is reported for "
            + ("any variant (the reference is among them)" if "full" in one_class else "them")
            + " and Holm's adjustment leaves them out.",
        ]
    lines += _plasticity_table(records, variants)
    lines += _runs_table(records)
    failed = [f"{r['variant']}/seed{r['seed']}: {r['status']}" for r in records if r["status"].startswith("failed")]
    if failed:
        lines += ["", "Failed runs (see their run.log; the next call runs them again): " + ", ".join(failed)]
    md = "\n".join(lines)
    with open(os.path.join(out, "ablations.md"), "w") as f:
        f.write(md + "\n")
    _bar_chart(os.path.join(out, "ablations.png"), per_metric)
    _delta_chart(os.path.join(out, "ablations_delta.png"), stats)
    return md


# the probe's columns in metrics.csv (per layer l<i>) -> the report's column (mean over layers, epochs)
PLASTICITY_TERMS = {"hebbian_over_opt": "hebbian_over_opt", "homeostatic_over_opt": "homeostatic_over_opt"}


def plasticity_sizes(history: list[dict]) -> dict[str, str]:
    """How far each plasticity term moved the connectome weights relative to the optimiser in one
    run: the median over its layers and epochs of the probe's ``<term>_l<i>`` columns (``""`` when
    the run logged none: the baseline, a run without plasticity or from before the probe).

    NOTE: the median, because the ratio explodes where the schedule takes the learning rate to
    zero (the last epoch of a cosine run: the optimiser stops, the homeostatic scaling does not)."""
    out = {}
    for term, column in PLASTICITY_TERMS.items():
        vals = [
            float(v)
            for h in history
            for k, v in h.items()
            if k.startswith(term + "_l") and v not in ("", None) and float(v) == float(v)
        ]
        out[column] = f"{statistics.median(vals):.4g}" if vals else ""
    return out


def _plasticity_table(records: list[dict], variants: list[str]) -> list[str]:
    """Markdown lines: per variant, the mean over seeds of each plasticity term's size."""
    rows = []
    for variant in variants:
        cells = []
        for column in PLASTICITY_TERMS.values():
            vals = [float(r[column]) for r in records if r["variant"] == variant and r.get(column, "") != ""]
            cells.append(f"{statistics.mean(vals):.3g}" if vals else "-")
        if any(c != "-" for c in cells):
            rows.append(f"| {variant} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        "",
        "Size of each plasticity term relative to the optimiser's update (||term|| / ||optimiser step||"
        " of the connectome weights; per run the median over layers and epochs, then the mean over seeds):",
        "",
        "| variant | Hebbian / optimiser | homeostatic / optimiser |",
        "|---|---|---|",
        *rows,
    ]


def _images_per_s(history: list[dict]) -> str:
    seconds = sum(h.get("seconds", 0.0) for h in history if "images_per_s" in h)
    if not seconds:
        return ""
    return f"{sum(h['seconds'] * h['images_per_s'] for h in history if 'images_per_s' in h) / seconds:.0f}"


def _percent(value: float | str) -> str:
    return "-" if value == "" else f"{100 * float(value):.2f}"


def _runs_table(records: list[dict]) -> list[str]:
    """Markdown lines: one row per finished run, with the machine and code revision it ran on
    (a grid filled over several working stretches may have run on different CPUs)."""
    done = [r for r in records if r["status"] == "done"]
    if not done:
        return []
    order = {name: i for i, name in enumerate(VARIANTS)}
    rows = []
    for r in sorted(done, key=lambda r: (r["seed"], order.get(r["variant"], len(order)))):  # as the grid ran
        minutes = "-" if r["train_seconds"] == "" else f"{float(r['train_seconds']) / 60:.1f}"
        plasticity = ["-" if r[c] == "" else f"{float(r[c]):.3f}" for c in PLASTICITY_TERMS.values()]
        revision = r["code_revision"].removeprefix("git:")[:7] or "-"
        machine = f"{r['cpu'] or '-'}, {r['cpu_capability'] or '-'}"
        cells = [f"{r['variant']}, seed {r['seed']}", _percent(r["public_acc"]), _percent(r["private_acc"])]
        cells += [_percent(r["private_tta_acc"]), _percent(r["private_unique_acc"]), minutes]
        cells += [r["images_per_s"] or "-", *plasticity, machine, revision]
        rows.append("| " + " | ".join(cells) + " |")
    return [
        "",
        "Runs (training minutes and images/s are each run's own, with whatever else the machine ran"
        " beside it; compare speeds with `benchmarks/`, not here):",
        "",
        "| run | PublicTest % | PrivateTest % | ten-crop | not in Training | training min | img/s"
        " | Hebbian / opt | homeostatic / opt | machine, ISA | code |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def _one_class(split: dict) -> bool | str:
    return predicts_one_class(split["confusion"]) if "confusion" in split else ""  # older files: unknown


def predicts_one_class(confusion: list[list[int]]) -> bool:
    """True when every image of a confusion matrix ``[true, predicted]`` got the same prediction."""
    return sum(1 for j in range(len(confusion)) if any(row[j] for row in confusion)) <= 1


def paired_stats(
    acc: dict[str, dict[int, float]], reference: str = "full", exclude: set[str] | frozenset = frozenset()
) -> dict[str, dict]:
    """Per variant: accuracy over seeds and its paired difference to ``reference``.

    ``acc`` maps variant -> {seed: accuracy in %}. Each entry has ``mean``/``sd`` (sample std) of
    the variant's own seeds and, over the seeds both have, ``diffs`` (variant minus reference per
    common seed, in seed order; empty for the reference), ``delta`` (their mean, points),
    ``ci`` (95 % t-interval of that mean, 2+ common seeds), ``p`` (paired t-test) and ``holm``
    (``p`` adjusted by Holm's step-down method over all variants with a ``p``: with 13 variants
    tested, one of them lands under 0.05 by chance about half the time). Missing values are None.
    Variants in ``exclude`` (models at chance level) get no test (``"meaningless": True``), and
    none gets one when the reference is among them.
    """
    from scipy.stats import t as student_t
    from scipy.stats import ttest_rel

    base = acc.get(reference, {})
    out: dict[str, dict] = {}
    for variant, vals in acc.items():
        entry = {
            "mean": statistics.mean(vals.values()),
            "sd": statistics.stdev(vals.values()) if len(vals) > 1 else 0.0,
            "delta": None,
            "ci": None,
            "p": None,
            "holm": None,
            "diffs": [],
        }
        common = sorted(set(vals) & set(base))
        entry["meaningless"] = variant in exclude or (reference in exclude and variant != reference)
        if variant != reference and common and not entry["meaningless"]:
            entry["diffs"] = diffs = [vals[s] - base[s] for s in common]
            entry["delta"] = statistics.mean(diffs)
            if len(common) > 1:
                half = student_t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
                entry["ci"] = (entry["delta"] - half, entry["delta"] + half)
                with warnings.catch_warnings():  # near-identical differences: scipy warns, p is ~0 anyway
                    warnings.simplefilter("ignore", RuntimeWarning)
                    pvalue = float(ttest_rel([vals[s] for s in common], [base[s] for s in common]).pvalue)
                # identical differences on every seed give t = inf (p = 0) or 0/0: no test to report
                entry["p"] = None if pvalue != pvalue else pvalue
        out[variant] = entry
    tested = sorted((e["p"], v) for v, e in out.items() if e["p"] is not None)
    running = 0.0
    for rank, (pvalue, variant) in enumerate(tested):  # Holm: p_(i) * (m - i), kept monotone
        running = max(running, min(1.0, (len(tested) - rank) * pvalue))
        out[variant]["holm"] = running
    return out


def _p_cell(pvalue: float | None) -> str:
    return "-" if pvalue is None else "< 0.001" if pvalue < 1e-3 else f"{pvalue:.3g}"


def _stats_cells(entry: dict | None) -> list[str]:
    """mean ± std, Δ to the full model, its 95 % CI, paired t-test p, Holm-adjusted p."""
    if entry is None:
        return ["-"] * 5
    if entry.get("meaningless"):
        return [f"{entry['mean']:.2f} ± {entry['sd']:.2f}", "n/a", "n/a", "n/a", "n/a"]
    delta = "-" if entry["delta"] is None else f"{entry['delta']:+.2f}"
    ci = "-" if entry["ci"] is None else f"[{entry['ci'][0]:+.2f}, {entry['ci'][1]:+.2f}]"
    return [f"{entry['mean']:.2f} ± {entry['sd']:.2f}", delta, ci, _p_cell(entry["p"]), _p_cell(entry["holm"])]


def _panels(path: str, panels: dict[str, dict]):
    """A figure with one row of axes per metric, as wide as the most variants any row has;
    ``None`` when there is nothing to draw (and then no figure is left from an earlier call)."""
    if not panels:
        if os.path.exists(path):
            os.remove(path)
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_variants = max(len(per) for per in panels.values())
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(max(5, 0.6 * n_variants + 2), 3.6 * len(panels) + 0.6), squeeze=False
    )
    return fig, axes[:, 0]


def _spread(groups: dict[str, list[float]]) -> tuple[list[str], list[float], list[float]]:
    """Names, means and sample stds (0 for one value) of each group, in order."""
    names = list(groups)
    means = [statistics.mean(groups[n]) for n in names]
    sds = [statistics.stdev(groups[n]) if len(groups[n]) > 1 else 0.0 for n in names]
    return names, means, sds


def _save(fig, path: str, title: str) -> None:
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _bar_chart(path: str, per_metric: dict[str, dict[str, dict[int, float]]]) -> None:
    drawn = _panels(path, per_metric)
    if drawn is None:
        return
    fig, axes = drawn
    for ax, (split, acc) in zip(axes, per_metric.items(), strict=True):
        names, means, sds = _spread({n: list(seeds.values()) for n, seeds in acc.items()})
        colours = ["tab:green" if n == "full" else "tab:gray" if n == "baseline" else "tab:blue" for n in names]
        ax.bar(range(len(names)), means, yerr=sds, capsize=3, color=colours)
        if "full" in acc:  # the full model's mean and seed spread, to read each bar against
            full_mean, full_sd = means[names.index("full")], sds[names.index("full")]
            ax.axhline(full_mean, color="tab:green", lw=1, ls="--", zorder=2)
            if full_sd > 0:
                ax.axhspan(full_mean - full_sd, full_mean + full_sd, color="tab:green", alpha=0.15, lw=0, zorder=0)
        for i, n in enumerate(names):
            ax.scatter([i] * len(acc[n]), list(acc[n].values()), color="k", s=8, zorder=3)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_ylabel(f"{METRICS[split][1].rstrip(' %')} accuracy (%)")
        lo = min(min(acc[n].values()) for n in names)
        ax.set_ylim(max(0.0, lo - 5), None)
    _save(fig, path, "BioNIC ablations (mean ± std over seeds; dots are seeds; band: full model ± std)")


def _delta_chart(path: str, stats: dict[str, dict[str, dict]]) -> None:
    """Each variant minus the full model, seed by seed (paired): where the accuracy bars cannot
    show a 1-point difference beside the 20 points of the variant without the conv front end.
    The axis is scaled to the variants within 8 points of the full model; larger differences are
    drawn to the edge and labelled with their value."""
    deltas = {split: {v: e["diffs"] for v, e in per.items() if e["diffs"]} for split, per in stats.items()}
    deltas = {split: per for split, per in deltas.items() if per}
    drawn = _panels(path, deltas)
    if drawn is None:
        return
    fig, axes = drawn
    for ax, (split, per) in zip(axes, deltas.items(), strict=True):
        names, means, sds = _spread(per)
        near = [abs(d) for n, m in zip(names, means, strict=True) if abs(m) <= 8 for d in per[n]]
        limit = max(near, default=1.0) + 0.5
        colours = ["tab:gray" if n == "baseline" else "tab:blue" for n in names]
        shown = [max(-limit, min(limit, m)) for m in means]
        ax.bar(
            range(len(names)),
            shown,
            yerr=[sd if abs(m) <= limit else 0 for m, sd in zip(means, sds, strict=True)],
            capsize=3,
            color=colours,
        )
        for i, (n, m) in enumerate(zip(names, means, strict=True)):
            dots = [d for d in per[n] if abs(d) <= limit]
            ax.scatter([i] * len(dots), dots, color="k", s=8, zorder=3)
            if abs(m) > limit:
                ax.text(
                    i,
                    0.92 * (limit if m > 0 else -limit),
                    f"{m:+.1f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white",
                    fontweight="bold",
                )
        ax.axhline(0.0, color="tab:green", lw=1)
        ax.set_ylim(-limit, limit)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_ylabel(f"{METRICS[split][1].rstrip(' %')}\nvariant − full (points)")
    _save(fig, path, "BioNIC ablations, paired by seed (bar: mean difference ± std; dots: seeds)")


def main(argv: list[str] | None = None) -> int:
    """The runner's command line; prints the report. Exit 0 when every run finished, 1 when some
    failed (the next call re-runs them), 2 for bad input."""
    ap = argparse.ArgumentParser(description="BioNIC ablation runner (resumable, parallel, crash-tolerant)")
    ap.add_argument("--data", help="FER-2013 path (default $BIONIC_FER2013 or ./data/fer2013)")
    ap.add_argument("--out", default="runs/ablations")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", help=f"subset of: {' '.join(VARIANTS)}")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (spread over GPUs when present)")
    ap.add_argument("--config", help="base TrainConfig as JSON/YAML")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--device")
    ap.add_argument("--quick", action="store_true", help="each run: first 300 images per split, one epoch")
    ap.add_argument("--list", action="store_true", help="print the variants and exit")
    ap.add_argument(
        "--report",
        action="store_true",
        help="write ablations.csv/.md/.png from the finished runs in --out and exit (runs nothing)",
    )
    ap.add_argument(
        "--allow-code-change",
        action="store_true",
        help="resume interrupted runs that other code started (each results.json lists the revisions)",
    )
    args = ap.parse_args(argv)
    if args.list:
        try:
            for name, (train_over, model_over) in VARIANTS.items():
                print(f"{name:<18} {json.dumps({**train_over, **model_over})}")
        except BrokenPipeError:  # `--list | head`
            return _reader_left()
        return 0
    try:
        base = load_config_file(args.config) if args.config else {}
        if args.data is not None and not os.path.exists(args.data):
            raise FileNotFoundError(f"--data {args.data!r} does not exist")
        for key in ("data", "epochs", "batch_size", "lr", "device"):
            if getattr(args, key) is not None:
                base[key] = getattr(args, key)
        if args.quick:
            base["quick"] = True
        if args.allow_code_change:
            base["allow_code_change"] = True
        base.pop("out", None)
        base.pop("seed", None)
        from .trainer import check_out_path

        check_out_path(args.out)  # a file, a path inside a file, nowhere to write: before any run starts
        if args.report:
            rows = report(args.out, args.seeds, args.variants)
        else:
            rows = run_ablations(args.out, base, args.seeds, args.variants, jobs=args.jobs)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the runs were interrupted with us; finished ones are kept
        prog = invocation(sys.argv[0] if sys.argv else "", "bionic_sparse.training.ablation")
        again = " ".join([prog, *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))])
        print(
            f"\ninterrupted: finished runs are kept, interrupted ones resume. Continue with: {again}", file=sys.stderr
        )
        return 130
    failed = [r for r in rows if r["status"].startswith("failed")]
    written = [
        n
        for n in ("ablations.csv", "ablations.md", "ablations.png", "ablations_delta.png")
        if os.path.exists(os.path.join(args.out, n))
    ]
    finished = sum(r["status"].startswith("done") for r in rows)
    missing = sum(r["status"] == "not run" for r in rows)
    try:
        with open(os.path.join(args.out, "ablations.md")) as f:
            print(f.read())
        print(
            f"{finished} runs finished, {len(failed)} failed"
            + (f", {missing} not run yet" if missing else "")
            + f" -> {args.out}/: {', '.join(written)}"
        )
    except BrokenPipeError:  # `--report | head`: the files are written; only the printout stops
        return _reader_left()
    return 1 if failed else 0


def _reader_left() -> int:
    """stdout's reader has gone (``| head``): stop quietly, as Unix tools do (exit 141, SIGPIPE)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


if __name__ == "__main__":
    sys.exit(main())
