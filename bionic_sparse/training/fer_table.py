"""``python -m bionic_sparse.training.fer_table ROOT``: the accuracy table and figures of a folder of runs."""

from __future__ import annotations

import os

from .report import accuracy_table, collect_runs, plot_comparison

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``python -m bionic_sparse.training.fer_table ROOT [--out DIR]``: print the accuracy table of
    the runs under ROOT and write ``learning_curves.png`` and the best runs' confusion matrices."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="Accuracy table and figures of a folder of FER-2013 runs")
    ap.add_argument("root", help="folder of runs (<model>-seed<k>/ or <variant>/seed<k>/)")
    ap.add_argument("--out", help="where to write the figures and table.md (default: ROOT)")
    ap.add_argument("--models", nargs="+", help="models/variants to draw (default: all)")
    args = ap.parse_args(argv)
    groups = collect_runs(args.root)
    if not groups:
        print(f"error: no results.json under {args.root!r}", file=sys.stderr)
        return 2
    out = args.out or args.root
    os.makedirs(out, exist_ok=True)
    table = accuracy_table(groups)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table + "\n")
    files = plot_comparison(groups, out, tuple(args.models) if args.models else None)
    print(table)
    print("wrote " + ", ".join([os.path.join(out, "table.md"), *files]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
