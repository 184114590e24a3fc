"""The biology every backend shares, written once: synaptic-noise modes, the activity statistics,
the homeostatic scale, the activity EMA and the Hebbian (Oja) + homeostatic rule.

The rule is split the way the engine runs it. In a training step the weight-gradient pass also
writes the Hebbian correlation ``post^T pre / B`` of the stored blocks (:func:`correlation`), the
forward pass writes the activity statistics (:func:`post_moments`), and after the optimiser step
:func:`plasticity_rule` applies the update elementwise. :func:`dense_plasticity` chains the three
on a dense weight: it is the reference that ``MaskedLinear``, the CPU backend and the tests use,
and the Triton kernels are tested against it.
"""

from __future__ import annotations

import torch

__all__ = [
    "MULTIPLICATIVE",
    "ADDITIVE",
    "NOISE_MODES",
    "post_moments",
    "correlation",
    "homeostatic_scale",
    "row_scale",
    "update_rate_",
    "plasticity_rule",
    "dense_plasticity",
]

MULTIPLICATIVE = "multiplicative"  # W * (1 + sigma xi)
ADDITIVE = "additive"  # W + sigma xi
NOISE_MODES = (MULTIPLICATIVE, ADDITIVE)


def post_moments(post: torch.Tensor) -> torch.Tensor:
    """Activity statistics of each output unit over the batch: ``[2, n_out]`` (float32 or wider)
    holding ``mean_B |post|`` (the rate that homeostasis tracks) and ``mean_B post^2`` (Oja's decay)."""
    post2d = post.reshape(-1, post.shape[-1]).to(torch.promote_types(post.dtype, torch.float32))
    batch = max(post2d.shape[0], 1)
    return torch.stack((post2d.abs().sum(0) / batch, post2d.square().sum(0) / batch))


def correlation(pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """Dense Hebbian correlation ``post^T pre / B`` ``[n_out, n_in]`` (in ``pre``'s dtype)."""
    pre2d = pre.reshape(-1, pre.shape[-1])
    post2d = post.reshape(-1, post.shape[-1]).to(pre2d.dtype)
    return post2d.T @ pre2d / max(pre2d.shape[0], 1)


def homeostatic_scale(post_rate: torch.Tensor, target_rate: float, homeo_rate: float) -> torch.Tensor:
    """Per-postsynaptic-row synaptic scaling ``1 + homeo_rate (target - r) / (target + |r|)``
    ``[n_out]``: above 1 for rows below the target rate, in ``(1 - homeo_rate, 1 + homeo_rate)``."""
    rate = post_rate.to(torch.promote_types(post_rate.dtype, torch.float32))
    return 1.0 + homeo_rate * (target_rate - rate) / (target_rate + rate.abs() + 1e-12)


def row_scale(post_rate: torch.Tensor | None, target_rate: float, homeo_rate: float) -> torch.Tensor | None:
    """:func:`homeostatic_scale`, or ``None`` when homeostasis is off (rate 0 or no rate)."""
    if homeo_rate == 0.0 or post_rate is None:
        return None
    return homeostatic_scale(post_rate, target_rate, homeo_rate)


def update_rate_(post_rate: torch.Tensor, batch_rate: torch.Tensor, momentum: float) -> None:
    """EMA of the activity per output unit: ``r <- m r + (1 - m) batch_rate``, where
    ``batch_rate[n_out]`` is this batch's ``mean_B |post|`` (row 0 of :func:`post_moments`)."""
    post_rate.mul_(momentum).add_(batch_rate.to(post_rate.dtype), alpha=1 - momentum)


def plasticity_rule(
    weight: torch.Tensor,
    corr: torch.Tensor,
    post_sq: torch.Tensor,
    scale: torch.Tensor | None,
    eta: float,
    oja: float,
) -> torch.Tensor:
    """One Hebbian (Oja) + homeostatic step, elementwise: ``W' = (W + eta (C - oja q W)) s`` with
    an entry whose sign would flip set to zero.

    ``weight`` and ``corr`` have the same shape; ``post_sq`` (``q``, the mean squared activity of
    the postsynaptic unit) and ``scale`` (``s``, its :func:`homeostatic_scale`, or ``None``) are
    already broadcast to it (``[n_out, 1]`` for a dense weight, ``[nnzb, b, 1]`` for blocks).
    Returns a new tensor in ``weight.dtype``; masking is the caller's.
    """
    w = weight.to(torch.promote_types(weight.dtype, corr.dtype))
    # NOTE: written with out-of-place ops fused by hand (addcmul, in-place scale and fill): the CPU
    # update is memory-bound, and each temporary [nnzb, b, b] costs about a millisecond at 1.7M synapses
    delta = torch.addcmul(corr.to(w.dtype), post_sq.to(w.dtype), w, value=-oja)  # C - oja q W
    new = torch.add(w, delta, alpha=eta)
    if scale is not None:
        new.mul_(scale.to(new.dtype))
    new.masked_fill_(new * w < 0, 0.0)  # a weight stops at zero instead of changing sign
    return new.to(weight.dtype)


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
    """The reference: one plasticity step on a dense ``weight[n_out, n_in]`` from activities.

    ``W' = W + eta (post^T pre / B - oja mean_B(post^2) W)``, each row ``i`` then scaled by
    :func:`homeostatic_scale` of ``post_rate``, an entry whose sign would flip set to zero, and
    the result masked. ``pre[..., n_in]`` is the raw presynaptic activity (with Dale's law the
    weights are magnitudes and grow with correlation whatever the presynaptic sign);
    ``post[..., n_out]`` is the layer's output. Returns a new tensor in ``weight.dtype``.
    """
    pre, post = pre.to(weight.dtype), post.to(weight.dtype)
    corr = correlation(pre, post)
    post_sq = post_moments(post)[1][:, None]
    scale = row_scale(post_rate, target_rate, homeo_rate)
    scale = None if scale is None else scale[:, None]
    return plasticity_rule(weight, corr, post_sq, scale, eta, oja) * mask.to(weight.dtype)
