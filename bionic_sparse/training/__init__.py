"""Training: the FER-2013 trainer (:func:`train`, the ``bionic-train`` CLI) and the ablation runner.

The trainer needs the ``[train]`` extra (tqdm, matplotlib, torchvision, Pillow, PyYAML); its names
are imported on first use, so that ``bionic-train --help`` and the config tools work without it and
a run without it ends in one line that names the extra.
"""

from __future__ import annotations

from typing import Any

from .config import TrainConfig, load_config_file

__all__ = ["Run", "TrainConfig", "evaluate", "load_config_file", "train", "require_train_extra"]

TRAIN_EXTRA_MODULES = ("tqdm", "matplotlib")


def require_train_extra() -> None:
    """Raise ``ImportError`` naming the ``[train]`` extra when one of its packages is missing."""
    import importlib

    missing = []
    for name in TRAIN_EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(
            f"the trainer needs the [train] extra ({', '.join(missing)} missing): pip install 'bionic-sparse[train]'"
        )


def __getattr__(name: str) -> Any:
    if name in ("Run", "evaluate", "train"):
        require_train_extra()
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
