"""``python -m bionic_sparse.training``: see :mod:`bionic_sparse.training.cli`."""

import sys

from .cli import main

sys.exit(main())
