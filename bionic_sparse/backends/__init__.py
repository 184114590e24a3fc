"""The backends of the block-sparse ops: one contract, two implementations, one dispatch.

:mod:`~bionic_sparse.backends.cpu` (PyTorch; any device) and
:mod:`~bionic_sparse.backends.triton` (the Triton kernels) implement the same four functions with
the same keyword-only signatures. Shapes: ``x[M, n_in]`` / ``dy, post[M, n_out]`` (any leading
dims, flattened), ``values[nnzb, b, b]``, int32 index views of
:class:`~bionic_sparse.BlockSparseMatrix`, ``synapse_mask[nnzb, b, b]`` bool or ``None``,
``sign[n_in]`` or ``None``; noise is ``(sigma, seed, noise_mode)`` (sigma 0: none).

``bsr_linear_fwd(*, x, values, crow, col, row, synapse_mask, sign, n_out, sigma, seed, noise_mode,
post_bias, post_moments) -> y``
    ``y[..., n_out] = x @ W_eff^T`` with ``W_eff = noisy(values) * M * sign[None, :]``, no bias.
    When ``post_moments`` (float32 ``[2, n_out]``) is given it receives the activity statistics of
    ``post = y + post_bias`` (:func:`bionic_sparse.plasticity.post_moments`).
``bsr_linear_dx(*, dy, values, ccol_t, row_t, perm_t, synapse_mask, sign, n_in, sigma, seed,
noise_mode) -> dx``
    ``dx[..., n_in] = dy @ W_eff`` over the transposed index, with the forward's noise.
``bsr_linear_dw(*, dy, x, row, col, block_size, out_dtype, synapse_mask, sign, sigma, seed,
noise_mode, post, post_bias, corr) -> dW or None``
    One pass over the stored blocks: the weight gradient ``dW[nnzb, b, b]`` (zero off the synapse
    mask; ``None`` when ``dy`` is ``None``) and, when ``corr`` (float32 ``[nnzb, b, b]``) is given,
    the Hebbian correlation ``(post + post_bias)^T x / B`` of the same tiles written into it.
``bsr_plasticity_(*, values, corr, row, synapse_mask, post_sq, scale, eta, oja) -> None``
    The plasticity update applied in place from a correlation
    (:func:`bionic_sparse.plasticity.plasticity_rule`, then the synapse mask).

The CPU thresholds of :func:`~bionic_sparse.backends.cpu.cpu_method` decide how the CPU backend
runs each call; :func:`use_triton` decides which backend runs.
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

__all__ = ["for_tensor", "use_triton", "ENV_BACKEND"]

ENV_BACKEND = "BIONIC_SPARSE_BACKEND"


def use_triton(t: torch.Tensor) -> bool:
    """True when the Triton kernels should run on ``t``'s device.

    CUDA tensors always use Triton. CPU tensors use it only when ``BIONIC_SPARSE_BACKEND=triton``
    (with ``TRITON_INTERPRET=1`` set before Triton is imported), which the kernel tests use.
    """
    if t.device.type == "cuda":
        return True
    return t.device.type == "cpu" and os.environ.get(ENV_BACKEND, "") == "triton"


def for_tensor(t: torch.Tensor) -> ModuleType:
    """The backend module that runs ops on ``t``."""
    if use_triton(t):
        from . import triton

        return triton
    from . import cpu

    return cpu
