"""``TrainConfig`` and the one loader of JSON/YAML config files (trainer CLI and ablation runner)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from ..fields import coerce_fields
from ..models.bionic import BioNICConfig
from ..models.volume import VolumeConfig

__all__ = ["TrainConfig", "load_config_file", "NON_IDENTITY_FIELDS", "MODELS", "model_config_class"]

MODELS = ("bionic", "baseline", "volume")


def model_config_class(model: str) -> type:
    """The ``model_config`` dataclass of a model name: :class:`VolumeConfig` for ``"volume"``,
    :class:`BioNICConfig` for the column model and its baseline."""
    return VolumeConfig if model == "volume" else BioNICConfig


# Fields that cannot change a run's result: they may differ between a run and its --resume (the
# device only between devices of one type; the thread count is not a field at all).
NON_IDENTITY_FIELDS = ("out", "resume", "overwrite", "allow_code_change", "tensorboard", "device", "checkpoint_minutes")


@dataclass
class TrainConfig:
    """Everything one training run depends on; saved as ``config.json`` in its output folder."""

    model: str = "bionic"  # "bionic", "baseline" or "volume" (the whole-volume recurrent model)
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 5e-4
    optimizer: str = "adamw"  # "adamw" or "sgd" (Nesterov, momentum 0.9)
    label_smoothing: float = 0.1
    augment: bool = True
    random_erasing: float = 0.0  # with augment: probability per training image of one erased rectangle
    tta: bool = False  # also evaluate with ten-crop test-time augmentation at the end (extra columns)
    amp: bool = False  # bf16 autocast on CUDA
    compile: bool = False  # torch.compile the training forward (default inductor backend)
    seed: int = 0
    device: str = "auto"
    data: str | None = None
    out: str = "runs/fer"
    quick: bool = False  # the first 300 images of each split, one epoch
    train_images: int | None = None  # train on this many (after the hold-out; stratified, seeded): reduced budgets
    holdout: float = 0.0  # fraction of Training held out (stratified, seeded) as an in-distribution split
    select_on: str = "public_test"  # split for model selection: "public_test" or "holdout"
    resume: bool = False
    overwrite: bool = False  # start over in an --out that holds another run (its files are deleted first)
    allow_code_change: bool = False  # --resume a run whose checkpoint other code wrote (recorded in results.json)
    tensorboard: bool = False
    # also write last.pt inside an epoch, every this many minutes of training (0: at the end of each
    # epoch only). For epochs longer than a working stretch (the whole-volume model: hours); --resume
    # then continues from that step, bit for bit as if never stopped
    checkpoint_minutes: float = 0.0
    # "constant": the Hebbian rate and the homeostatic rate stay as configured all run (what every
    # committed run did); "lr": both are scaled by the learning-rate schedule's factor (warm-up,
    # cosine), so plasticity stops when the optimiser does
    plasticity_schedule: str = "constant"
    model_config: BioNICConfig | VolumeConfig = field(default_factory=BioNICConfig)

    def __post_init__(self) -> None:
        # TrainConfig(model="volume") with the default model_config means the volume's defaults
        if self.model == "volume" and self.model_config == BioNICConfig():
            self.model_config = VolumeConfig()

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """From a loose mapping (JSON, YAML, flags): every key and type checked in one place
        (:mod:`bionic_sparse.fields`), then the ranges (:meth:`validate`)."""
        if not isinstance(d, dict):
            raise ValueError(f"a config must be a mapping of TrainConfig fields, got {type(d).__name__}")
        d = dict(d)
        model_config = d.pop("model_config", None)
        d = coerce_fields(cls, d)
        kind = model_config_class(d.get("model", "bionic"))
        if isinstance(model_config, (BioNICConfig, VolumeConfig)):
            d["model_config"] = model_config
        elif model_config is not None:
            d["model_config"] = kind.from_dict(model_config)
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def effective_epochs(self) -> int:
        return 1 if self.quick else self.epochs

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that is out of range."""
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        kind = model_config_class(self.model)
        if not isinstance(self.model_config, kind):
            raise ValueError(
                f"model {self.model!r} takes a {kind.__name__} as model_config, got {type(self.model_config).__name__}"
            )
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.random_erasing <= 1:
            raise ValueError(f"random_erasing must lie in [0, 1] (a probability per image), got {self.random_erasing}")
        if not self.checkpoint_minutes >= 0:
            raise ValueError(f"checkpoint_minutes must be >= 0 (0: at epoch ends only), got {self.checkpoint_minutes}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.plasticity_schedule not in ("constant", "lr"):
            raise ValueError(f"plasticity_schedule must be 'constant' or 'lr', got {self.plasticity_schedule!r}")
        if self.select_on not in ("public_test", "holdout"):
            raise ValueError(f"select_on must be 'public_test' or 'holdout', got {self.select_on!r}")
        if self.select_on == "holdout" and not self.holdout > 0:
            raise ValueError("select_on='holdout' needs holdout > 0 (the fraction of Training to hold out)")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")
        if self.train_images is not None and self.train_images < 1:
            raise ValueError(f"train_images must be >= 1, got {self.train_images}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run in --out, or delete it")


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
