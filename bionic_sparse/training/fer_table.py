"""``python -m bionic_sparse.training.fer_table ROOT``: the accuracy table and figures of a folder of runs."""

from __future__ import annotations

import os

from .report import accuracy_table, collect_runs, image_level_tests, plot_comparison, split_incomparable

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
    ap.add_argument(
        "--compare",
        nargs=2,
        action="append",
        metavar=("A", "B"),
        help="image-level tests of A - B (repeatable; default: every model against 'full', where present)",
    )
    args = ap.parse_args(argv)
    groups = collect_runs(args.root)
    if not groups:
        print(f"error: no results.json under {args.root!r}", file=sys.stderr)
        return 2
    groups, notes = split_incomparable(groups)
    pairs = [tuple(p) for p in args.compare] if args.compare else [(n, "full") for n in groups if n != "full"]
    unknown = [n for p in pairs for n in p if n not in groups] if args.compare else []
    if unknown:
        print(f"error: --compare: no runs named {unknown[0]!r} under {args.root!r} (found: {', '.join(groups)})",
              file=sys.stderr)  # fmt: skip
        return 2
    if not args.compare and "full" in groups:
        pairs = [("full", n) for n, _ in pairs]  # BioNIC minus each other model
    elif not args.compare:
        pairs = []
    out = args.out or args.root
    from .trainer import check_out_path

    try:
        check_out_path(out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(out, exist_ok=True)
    table = "\n".join([accuracy_table(groups), *([""] + notes if notes else [])])
    first = next(iter(groups.values()))[0]
    n_test = first.get("private_test", {}).get("n")  # older result files lack it
    if n_test:
        p = first["private_test"]["accuracy"]
        table += (
            f"\n\nThe test set's own sampling error: one run's PrivateTest accuracy near {100 * p:.0f} % on "
            f"{n_test:,} images has a binomial standard error of {100 * (p * (1 - p) / n_test) ** 0.5:.2f} points; "
            "the '± 95 %' column adds it to the spread over seeds (every seed is scored on the same images)."
        )
    tests = image_level_tests(groups, pairs)
    if tests:
        table += "\n\n## Image-level tests\n" + tests
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table + "\n")
    files = plot_comparison(groups, out, tuple(args.models) if args.models else None)
    print(table)
    print("wrote " + ", ".join([os.path.join(out, "table.md"), *files]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
