"""Before/after: the trainer's step (``benchmarks/cpu_training.py``) run against two source trees of
this project, one process at a time, alternating, at one thread each.

    git worktree add /tmp/before <commit>
    python benchmarks/compare_revisions.py --before /tmp/before --after . --rounds 3 \
        --out benchmarks/results/<date>-cpu-train-step-before-after.json

Each process imports ``bionic_sparse`` from its tree (``PYTHONPATH``) and times ``Run.train_epoch``
steps of BioNIC and the baseline at ``configs/fer-cpu.json`` (batch 64); the JSON holds every
process's images/s and CPU time, the medians and the after/before ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _revision(tree: str) -> str:
    out = subprocess.run(["git", "-C", tree, "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def _worker(tree: str, model: str, batches: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    env["TQDM_DISABLE"] = "1"
    cmd = [sys.executable, os.path.join(HERE, "cpu_training.py"), "--model", model, "--batches", str(batches)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    trees = {"before": args.before, "after": args.after}
    rows = []
    for r in range(args.rounds):
        for model in ("bionic", "baseline"):
            for name, tree in trees.items():
                res = _worker(tree, model, args.batches)
                rows.append({"round": r, "tree": name, **res})
                print(json.dumps(rows[-1]))
    summary = {}
    for model in ("bionic", "baseline"):
        for name in trees:
            sel = [x for x in rows if x["model"] == model and x["tree"] == name]
            summary[f"{model}_{name}"] = {
                "step_cpu_ms": 1e3 * statistics.median(x["cpu_s"] / x["images"] * 64 for x in sel),
                "images_per_s": statistics.median(x["images_per_s"] for x in sel),
            }
    for model in ("bionic", "baseline"):
        summary[f"{model}_speedup"] = (
            summary[f"{model}_before"]["step_cpu_ms"] / summary[f"{model}_after"]["step_cpu_ms"]
        )
    summary["ratio_bionic_over_baseline_before"] = (
        summary["bionic_before"]["step_cpu_ms"] / summary["baseline_before"]["step_cpu_ms"]
    )
    summary["ratio_bionic_over_baseline_after"] = (
        summary["bionic_after"]["step_cpu_ms"] / summary["baseline_after"]["step_cpu_ms"]
    )
    result = {
        "what": "Run.train_epoch steps at configs/fer-cpu.json, batch 64, one thread, one process at a time",
        "before": {"tree": args.before, "revision": _revision(args.before)},
        "after": {"tree": args.after, "revision": _revision(args.after)},
        "runs": rows,
        "summary": summary,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
