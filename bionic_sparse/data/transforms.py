"""Image transforms for FER-2013 batches: normalisation, per-sample augmentation on the device,
and ten-crop test-time augmentation. Everything works on whole batches, so data preparation is
never the bottleneck of training."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["to_float", "augment_batch", "random_erase", "ten_crop_logits"]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 48, 48]`` -> float ``[B, 1, 48, 48]``: per-image histogram equalisation (each
    pixel becomes its mid-rank quantile in its image), scaled to zero mean and unit variance.

    NOTE: invariant to any monotone intensity change, so copies of FER-2013 that differ in
    brightness, contrast or gamma (re-encoded JPEGs, equalised re-distributions) give the model
    the same input.
    """
    b = images.shape[0]
    flat = images.reshape(b, -1).long()
    hist = torch.zeros(b, 256, dtype=torch.float32, device=images.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    below = hist.cumsum(1) - hist  # pixels strictly darker than each value
    mid_rank = below + (hist - 1) / 2  # ties share their mean rank
    q = torch.gather(mid_rank, 1, flat) / max(flat.shape[1] - 1, 1)
    return ((q - 0.5) / 0.2887).view(b, 1, *images.shape[1:])


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    max_shift: float = 4.0,
    max_rotation_deg: float = 10.0,
    flip: bool = True,
    brightness: float = 0.2,
    contrast: float = 0.2,
) -> torch.Tensor:
    """Per-sample random augmentation of a float batch ``[B, 1, H, W]`` on its own device: random
    translation of up to ``max_shift`` pixels (the random crop with padding), horizontal flip,
    rotation, brightness and contrast jitter, as one ``affine_grid`` + ``grid_sample``. The random
    numbers come from ``generator`` on the CPU, so a run is reproducible on any device."""
    b, _, h, w = x.shape
    dev = x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator) * (hi - lo) + lo).to(dev)

    angle = uniform(-max_rotation_deg, max_rotation_deg) * math.pi / 180
    sx = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0) if flip else torch.ones(b, device=dev)
    tx, ty = uniform(-max_shift, max_shift) * 2 / w, uniform(-max_shift, max_shift) * 2 / h
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos * sx, -sin, tx], 1), torch.stack([sin * sx, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    c = uniform(1 - contrast, 1 + contrast).view(b, 1, 1, 1)
    br = uniform(-brightness, brightness).view(b, 1, 1, 1) * 4.0  # in units of the image std (x 4: as 0.2 of range)
    return (out - mean) * c + mean + br


def random_erase(
    x: torch.Tensor,
    p: float,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
    value: float = 0.0,
) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020; torchvision's ``RandomErasing`` defaults) of a float
    batch ``[B, C, H, W]``: with probability ``p`` per image, one rectangle covering a fraction
    ``scale`` of its area with aspect ratio (height / width) log-uniform in ``ratio`` is set to
    ``value`` (0: the mean of a :func:`to_float` image). Returns a new tensor.

    NOTE: ``p = 0`` draws no random numbers, so it leaves the generator, and with it every later
    batch of a run, exactly as without this step."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"random erasing probability p must lie in [0, 1], got {p}")
    if not (0.0 < scale[0] <= scale[1] <= 1.0):
        raise ValueError(f"scale must be 0 < low <= high <= 1, got {scale}")
    if not (0.0 < ratio[0] <= ratio[1]):
        raise ValueError(f"ratio must be 0 < low <= high, got {ratio}")
    if p == 0.0:
        return x
    b, _, h, w = x.shape
    u = torch.rand(b, 5, generator=generator)  # erase?, area, aspect, top, left: one row per image
    area = (scale[0] + u[:, 1] * (scale[1] - scale[0])) * h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + u[:, 2] * (log_hi - log_lo))
    # a rectangle that does not fit is clipped to the image (torchvision retries instead)
    eh = torch.sqrt(area * aspect).round().clamp(1, h).long()
    ew = torch.sqrt(area / aspect).round().clamp(1, w).long()
    top = (u[:, 3] * (h - eh + 1)).floor().long()
    left = (u[:, 4] * (w - ew + 1)).floor().long()
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    inside = (
        (rows >= top.view(b, 1, 1))
        & (rows < (top + eh).view(b, 1, 1))
        & (cols >= left.view(b, 1, 1))
        & (cols < (left + ew).view(b, 1, 1))
        & (u[:, 0] < p).view(b, 1, 1)
    )
    return x.masked_fill(inside.unsqueeze(1).to(x.device), value)


def ten_crop_logits(model: torch.nn.Module, x: torch.Tensor, crop: int = 44) -> torch.Tensor:
    """Test-time augmentation: mean logits over torchvision's ten crops (resized back to 48)."""
    from torchvision.transforms.v2 import functional as TF

    crops = TF.ten_crop(x, [crop, crop])  # 10 x [B, 1, crop, crop]
    logits = [model(F.interpolate(c, size=x.shape[-2:], mode="bilinear", align_corners=False)) for c in crops]
    return torch.stack(logits).mean(0)
