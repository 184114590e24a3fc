"""``TrainConfig`` and the one loader of JSON/YAML config files (trainer CLI and ablation runner)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields

from ..models.bionic import BioNICConfig

__all__ = ["TrainConfig", "load_config_file"]


@dataclass
class TrainConfig:
    """Everything one training run depends on; saved as ``config.json`` in its output folder."""

    model: str = "bionic"  # "bionic" or "baseline"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 5e-4
    optimizer: str = "adamw"  # "adamw" or "sgd" (Nesterov, momentum 0.9)
    label_smoothing: float = 0.1
    augment: bool = True
    tta: bool = False  # also evaluate with ten-crop test-time augmentation at the end (extra columns)
    amp: bool = False  # bf16 autocast on CUDA
    seed: int = 0
    device: str = "auto"
    data: str | None = None
    out: str = "runs/fer"
    quick: bool = False  # the first 300 images of each split, one epoch
    train_images: int | None = None  # train on this many (after the hold-out; stratified, seeded): reduced budgets
    holdout: float = 0.0  # fraction of Training held out (stratified, seeded) as an in-distribution split
    select_on: str = "public_test"  # split for model selection: "public_test" or "holdout"
    resume: bool = False
    tensorboard: bool = False
    model_config: BioNICConfig = field(default_factory=BioNICConfig)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid: {sorted(names)}")
        if isinstance(d.get("model_config"), dict):
            d["model_config"] = BioNICConfig.from_dict(d["model_config"])
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def effective_epochs(self) -> int:
        return 1 if self.quick else self.epochs

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that is out of range."""
        if self.model not in ("bionic", "baseline"):
            raise ValueError(f"model must be 'bionic' or 'baseline', got {self.model!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.select_on not in ("public_test", "holdout"):
            raise ValueError(f"select_on must be 'public_test' or 'holdout', got {self.select_on!r}")
        if self.select_on == "holdout" and not self.holdout > 0:
            raise ValueError("select_on='holdout' needs holdout > 0 (the fraction of Training to hold out)")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")
        if self.train_images is not None and self.train_images < 1:
            raise ValueError(f"train_images must be >= 1, got {self.train_images}")


def load_config_file(path: str) -> dict:
    """A JSON or YAML (``.yaml``/``.yml``) mapping. Raises ``FileNotFoundError`` or a
    ``ValueError`` that names the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    with open(path) as f:
        text = f.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            d = yaml.safe_load(text) or {}
        else:
            d = json.loads(text) if text.strip() else {}
    except ValueError as e:  # json.JSONDecodeError
        raise ValueError(f"config file {path!r} is not valid JSON: {e}") from None
    except Exception as e:  # yaml.YAMLError has no common base with ValueError
        raise ValueError(f"config file {path!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(d, dict):
        raise ValueError(f"config file {path!r} must hold a mapping of TrainConfig fields, got {type(d).__name__}")
    return d
