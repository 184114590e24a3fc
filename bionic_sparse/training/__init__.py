"""Training: the FER-2013 trainer (:func:`train`, the ``bionic-train`` CLI) and the ablation runner."""

try:
    import matplotlib  # noqa: F401
    import tqdm  # noqa: F401
except ImportError as e:  # the engine installs without the trainer's dependencies
    raise ImportError(f"{e}: the trainer needs the [train] extra: pip install 'bionic-sparse[train]'") from e

from .config import TrainConfig, load_config_file
from .trainer import Run, evaluate, train

__all__ = ["Run", "TrainConfig", "evaluate", "load_config_file", "train"]
