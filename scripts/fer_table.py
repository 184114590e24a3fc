"""Print the accuracy table (mean +- std over seeds) of the runs under a directory.

python scripts/fer_table.py runs/fer
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import sys
from collections import defaultdict


def main(root: str) -> int:
    rows = defaultdict(list)
    for path in sorted(glob.glob(os.path.join(root, "*", "results.json"))):
        with open(path) as f:
            r = json.load(f)
        name = os.path.basename(os.path.dirname(path)).rsplit("-seed", 1)[0]
        rows[name].append(
            (
                r["seed"],
                r["private_test"]["accuracy"],
                r["public_test"]["accuracy"],
                r["epochs"],
                r["device"],
                r["versions"].get("cuda_device"),
            )
        )
    if not rows:
        print(f"no results.json under {root}")
        return 1
    print("| model | seeds | epochs | PrivateTest % (mean ± std) | PublicTest % | device |")
    print("|---|---|---|---|---|---|")
    for name, runs in rows.items():
        priv = [100 * r[1] for r in runs]
        pub = [100 * r[2] for r in runs]
        sd = statistics.stdev(priv) if len(priv) > 1 else 0.0
        print(
            f"| {name} | {','.join(str(r[0]) for r in runs)} | {runs[0][3]} | {statistics.mean(priv):.2f} ± {sd:.2f} "
            f"| {statistics.mean(pub):.2f} | {runs[0][5] or runs[0][4]} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "runs/fer"))
