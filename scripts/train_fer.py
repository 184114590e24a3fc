"""Train BioNIC (or the conventional baseline) on FER-2013: ``bionic_sparse.training.cli``.

python scripts/train_fer.py --sparse --data PATH   # = python -m bionic_sparse.training --sparse --data PATH
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bionic_sparse.training.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
