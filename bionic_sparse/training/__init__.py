"""Training: the FER-2013 trainer."""

from .trainer import TrainConfig, evaluate, train

__all__ = ["TrainConfig", "evaluate", "train"]
