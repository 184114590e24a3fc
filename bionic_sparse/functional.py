"""Public functional API over :class:`BlockSparseMatrix`: argument checks, then the custom ops."""

from __future__ import annotations

import math

import torch

from . import ops
from .format import BlockSparseMatrix
from .plasticity import NOISE_MODES

__all__ = ["bsr_linear", "plasticity_update", "check_gpu_block_size"]


GPU_BLOCK_SIZES = (16, 32, 64)


def check_gpu_block_size(block_size: int) -> None:
    """The Triton kernels need ``tl.dot`` tiles: a power of two >= 16 (and <= 64, beyond which
    every kernel config spills registers)."""
    if block_size not in GPU_BLOCK_SIZES:
        raise ValueError(
            f"block_size must be a power of two >= 16 for the GPU path (one of {GPU_BLOCK_SIZES}), got {block_size}"
        )


def _check_vector(v: torch.Tensor | None, n: int, name: str, what: str) -> None:
    if v is None:
        return
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(v).__name__}")
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one entry per {what}), got {tuple(v.shape)}")
    if not v.dtype.is_floating_point:
        raise TypeError(f"{name} must be floating, got {v.dtype}")


def _check_activations(x: torch.Tensor, n: int, name: str, matrix: BlockSparseMatrix) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be floating, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] != n:
        raise ValueError(f"{name}.shape[-1] must be {n}, got shape {tuple(x.shape)}")
    if x.device.type == "cuda":
        check_gpu_block_size(matrix.block_size)


def bsr_linear(
    x: torch.Tensor,
    matrix: BlockSparseMatrix,
    bias: torch.Tensor | None = None,
    sign: torch.Tensor | None = None,
    noise_sigma: float = 0.0,
    noise_seed: int = 0,
    noise_mode: str = "multiplicative",
    values: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y = x @ (W * M * sign)^T + bias`` with ``W`` block-sparse; differentiable in ``x``,
    ``values`` and ``bias``.

    Args:
        x: ``[..., n_in]`` presynaptic activity.
        matrix: topology (and values, unless ``values`` is given).
        bias: ``[n_out]`` or ``None``.
        sign: ``[n_in]`` per-presynaptic sign/gain (Dale's law, graded inhibition) or ``None``.
        noise_sigma: std of the synaptic noise ``xi`` (0 disables it).
        noise_seed: seed of the noise; the same seed gives the same noise on every backend.
        noise_mode: ``"multiplicative"`` (``W * (1 + sigma xi)``) or ``"additive"`` (``W + sigma xi``).
        values: ``[nnzb, b, b]`` to use instead of ``matrix.values`` (e.g. an ``nn.Parameter``).

    Returns:
        ``[..., n_out]`` in ``x.dtype``.
    """
    if not isinstance(matrix, BlockSparseMatrix):
        raise TypeError(f"matrix must be a BlockSparseMatrix, got {type(matrix).__name__}")
    n_out, n_in = matrix.shape
    values = matrix.values if values is None else values
    if values.shape != (matrix.nnzb, matrix.block_size, matrix.block_size):
        raise ValueError(
            f"values must have shape {(matrix.nnzb, matrix.block_size, matrix.block_size)}, got {tuple(values.shape)}"
        )
    _check_activations(x, n_in, "x", matrix)
    _check_vector(sign, n_in, "sign", "presynaptic input")
    _check_vector(bias, n_out, "bias", "output")
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
    noise_sigma = float(noise_sigma)
    if not math.isfinite(noise_sigma) or noise_sigma < 0:
        raise ValueError(f"noise_sigma must be finite and >= 0, got {noise_sigma}")
    return ops.bsr_linear(
        x,
        values,
        matrix.crow,
        matrix.col,
        matrix.row,
        matrix.ccol_t,
        matrix.row_t,
        matrix.perm_t,
        matrix.synapse_mask,
        sign,
        bias,
        n_out,
        noise_sigma,
        int(noise_seed),
        noise_mode,
    )


def plasticity_update(
    matrix: BlockSparseMatrix,
    pre: torch.Tensor,
    post: torch.Tensor,
    eta: float,
    oja: float = 1.0,
    post_rate: torch.Tensor | None = None,
    target_rate: float = 0.1,
    homeo_rate: float = 0.0,
    values: torch.Tensor | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """Local Hebbian (Oja) + homeostatic update on the synapses only.

    ``W' = W + eta * (post^T pre / B - oja * mean(post^2) * W)`` on the mask, then each
    postsynaptic row ``i`` is scaled by ``1 + homeo_rate * (target_rate - r_i) / (target_rate + |r_i|)``
    where ``r = post_rate`` (e.g. an EMA of the mean activity, ``[n_out]``). No synapse is created
    off the mask and no weight changes sign (it stops at zero).

    Args:
        pre: ``[..., n_in]`` presynaptic activity; post: ``[..., n_out]`` postsynaptic activity.
        inplace: write into ``values`` (no autograd) instead of returning a new tensor.

    Returns:
        The new ``values[nnzb, b, b]`` (the updated tensor itself when ``inplace``).
    """
    if not isinstance(matrix, BlockSparseMatrix):
        raise TypeError(f"matrix must be a BlockSparseMatrix, got {type(matrix).__name__}")
    n_out, n_in = matrix.shape
    values = matrix.values if values is None else values
    _check_activations(pre, n_in, "pre", matrix)
    _check_activations(post, n_out, "post", matrix)
    if pre.shape[:-1] != post.shape[:-1]:
        raise ValueError(f"pre and post must share leading dims, got {tuple(pre.shape)} and {tuple(post.shape)}")
    _check_vector(post_rate, n_out, "post_rate", "output")
    for name, v in (("eta", eta), ("oja", oja), ("target_rate", target_rate), ("homeo_rate", homeo_rate)):
        if not math.isfinite(float(v)):
            raise ValueError(f"{name} must be finite, got {v}")
    if not 0.0 <= homeo_rate < 1.0:
        raise ValueError(f"homeo_rate must lie in [0, 1), got {homeo_rate}")
    args = (
        values,
        pre,
        post,
        matrix.crow,
        matrix.col,
        matrix.row,
        matrix.synapse_mask,
        post_rate,
        float(eta),
        float(oja),
        float(target_rate),
        float(homeo_rate),
    )
    if inplace:
        with torch.no_grad():
            ops.bsr_hebbian_(*args)
        return values
    return ops.bsr_hebbian(*args)
