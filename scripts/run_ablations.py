"""Run the BioNIC ablation grid (resumable, parallel, crash-tolerant) and write the report.

    python scripts/run_ablations.py --data PATH --out runs/ablations --seeds 0 1 2 --epochs 30 --jobs 2
    python scripts/run_ablations.py --quick --data PATH --out runs/ablations-quick   # smoke test
    python scripts/run_ablations.py --list                                           # the variants

Logic in bionic_sparse/training/ablation.py. --config FILE (JSON/YAML) gives the base TrainConfig
(model fields under "model_config"); --epochs/--batch-size/--lr/--device override it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bionic_sparse.training.ablation import VARIANTS, run_ablations  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="BioNIC ablation runner")
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
    ap.add_argument("--quick", action="store_true", help="each run: 300 images per split, one epoch")
    ap.add_argument("--list", action="store_true", help="print the variants and exit")
    args = ap.parse_args(argv)
    if args.list:
        for name, (train_over, model_over) in VARIANTS.items():
            print(f"{name:<18} {json.dumps({**train_over, **model_over})}")
        return 0
    base: dict = {}
    if args.config:
        with open(args.config) as f:
            if args.config.endswith((".yaml", ".yml")):
                import yaml

                base = yaml.safe_load(f) or {}
            else:
                base = json.load(f)
    for key in ("data", "epochs", "batch_size", "lr", "device"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    if args.quick:
        base["quick"] = True
    base.pop("out", None)
    base.pop("seed", None)
    rows = run_ablations(args.out, base, args.seeds, args.variants, jobs=args.jobs)
    with open(os.path.join(args.out, "ablations.md")) as f:
        print(f.read())
    failed = [r for r in rows if r["status"].startswith("failed")]
    print(f"{len(rows) - len(failed)} runs finished, {len(failed)} failed -> {args.out}/ablations.csv, .md, .png")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
