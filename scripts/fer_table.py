"""Accuracy table (mean ± std over seeds) and figures of the runs under a folder:
``bionic_sparse.training.fer_table``.

    python scripts/fer_table.py runs/fer [--out DIR]
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bionic_sparse.training.fer_table import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
