"""Run the BioNIC ablation grid and write the report: ``bionic_sparse.training.ablation``.

python scripts/run_ablations.py --data PATH --out runs/ablations --seeds 0 1 2 --jobs 2
python scripts/run_ablations.py --list
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bionic_sparse.training.ablation import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
