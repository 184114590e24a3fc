"""The biology every backend shares, written once: synaptic-noise modes, the homeostatic scale,
the activity EMA and the Hebbian (Oja) + homeostatic rule as a dense reference.

The block-sparse CPU path and the Triton kernels implement the same rule on the stored blocks;
``MaskedLinear`` (dense-masked execution) calls :func:`dense_plasticity` directly, and the tests
compare every implementation with it.
"""

from __future__ import annotations

import torch

__all__ = [
    "MULTIPLICATIVE",
    "ADDITIVE",
    "NOISE_MODES",
    "homeostatic_scale",
    "update_rate_",
    "dense_plasticity",
]

MULTIPLICATIVE = "multiplicative"  # W * (1 + sigma xi)
ADDITIVE = "additive"  # W + sigma xi
NOISE_MODES = (MULTIPLICATIVE, ADDITIVE)


def homeostatic_scale(post_rate: torch.Tensor, target_rate: float, homeo_rate: float) -> torch.Tensor:
    """Per-postsynaptic-row synaptic scaling ``1 + homeo_rate (target - r) / (target + |r|)``
    ``[n_out]``: above 1 for rows below the target rate, in ``(1 - homeo_rate, 1 + homeo_rate)``."""
    rate = post_rate.to(torch.promote_types(post_rate.dtype, torch.float32))
    return 1.0 + homeo_rate * (target_rate - rate) / (target_rate + rate.abs() + 1e-12)


def update_rate_(post_rate: torch.Tensor, post: torch.Tensor, momentum: float) -> None:
    """EMA of the mean absolute activity per output unit: ``r <- m r + (1 - m) mean_batch |post|``."""
    post2d = post.reshape(-1, post_rate.shape[0])
    post_rate.mul_(momentum).add_(post2d.abs().mean(0).to(post_rate.dtype), alpha=1 - momentum)


def dense_plasticity(
    weight: torch.Tensor,
    mask: torch.Tensor,
    pre: torch.Tensor,
    post: torch.Tensor,
    eta: float,
    oja: float = 1.0,
    post_rate: torch.Tensor | None = None,
    target_rate: float = 0.1,
    homeo_rate: float = 0.0,
) -> torch.Tensor:
    """One Hebbian (Oja) + homeostatic step on a dense ``weight[n_out, n_in]`` (the reference).

    ``W' = W + eta (post^T pre / B - oja mean_B(post^2) W)``, each row ``i`` then scaled by
    :func:`homeostatic_scale` of ``post_rate``, an entry whose sign would flip set to zero, and
    the result masked. ``pre[..., n_in]`` is the raw presynaptic activity (with Dale's law the
    weights are magnitudes and grow with correlation whatever the presynaptic sign);
    ``post[..., n_out]`` is the layer's output. Returns a new tensor in ``weight.dtype``.
    """
    pre2d = pre.reshape(-1, weight.shape[1]).to(weight.dtype)
    post2d = post.reshape(-1, weight.shape[0]).to(weight.dtype)
    batch = max(pre2d.shape[0], 1)
    new = weight + eta * (post2d.T @ pre2d / batch - oja * post2d.pow(2).mean(0)[:, None] * weight)
    if homeo_rate != 0.0 and post_rate is not None:
        new = new * homeostatic_scale(post_rate, target_rate, homeo_rate).to(new.dtype)[:, None]
    new = torch.where(new * weight < 0, torch.zeros_like(new), new)
    return new * mask.to(new.dtype)
