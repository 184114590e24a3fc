"""What BioNIC and the volume model share: the retinotopic conv front end and the range checks of
the biological fields of their configs."""

from __future__ import annotations

from dataclasses import asdict

from torch import nn

from ..fields import coerce_fields

__all__ = ["N_CLASSES", "ModelConfigFields", "conv_stack", "check_shared_fields"]

N_CLASSES = 7  # FER-2013: angry, disgust, fear, happy, sad, surprise, neutral


def conv_stack(channels: tuple[int, ...], pool: int) -> tuple[list[nn.Module], int]:
    """VGG-style blocks (two 3x3 convs + BatchNorm + ReLU, then 2x2 max-pool) per entry of
    ``channels``, ending in ``AdaptiveAvgPool2d(pool)``: ``[B, 1, H, W] -> [B, C, pool, pool]``.
    Local and weight-shared, so each output cell sees its own patch of the face (retinotopic).
    Returns the layers (a list, so callers append and keep the state_dict keys) and ``C``."""
    layers: list[nn.Module] = []
    c_in = 1
    for c in channels:
        layers += [
            nn.Conv2d(c_in, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        c_in = c
    layers.append(nn.AdaptiveAvgPool2d(pool))
    return layers, c_in


class ModelConfigFields:
    """``from_dict`` / ``to_dict`` of the model config dataclasses (``model_config`` in a run's config)."""

    @classmethod
    def from_dict(cls, d: dict):
        """From a loose mapping (JSON, YAML): keys and types checked (:mod:`bionic_sparse.fields`)."""
        return cls(**coerce_fields(cls, d, "model_config"))

    def to_dict(self) -> dict:
        return asdict(self)


def check_shared_fields(cfg: object) -> None:
    """``ValueError`` naming the first out-of-range field among those both model configs have:
    ``front_channels`` (positive), ``front_pool`` >= 1, ``g_inh``, ``noise_sigma``,
    ``hebbian_eta``, ``target_rate`` >= 0; ``homeostasis_rate`` and ``dropout`` in [0, 1)."""
    if not cfg.front_channels or min(cfg.front_channels) < 1:
        raise ValueError(f"model_config.front_channels must be positive channel counts, got {cfg.front_channels}")
    if cfg.front_pool < 1:
        raise ValueError(f"model_config.front_pool must be >= 1, got {cfg.front_pool}")
    for name in ("g_inh", "noise_sigma", "hebbian_eta", "target_rate"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"model_config.{name} must be >= 0, got {getattr(cfg, name)}")
    for name in ("homeostasis_rate", "dropout"):
        if not 0 <= getattr(cfg, name) < 1:
            raise ValueError(f"model_config.{name} must lie in [0, 1), got {getattr(cfg, name)}")
