"""The Triton backend: the contract of :mod:`bionic_sparse.backends` over the kernel launchers of
:mod:`bionic_sparse.triton_kernels` (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``).

The launchers take the noise mode as a flag; everything else passes straight through.
"""

from __future__ import annotations

import torch

from ..plasticity import MULTIPLICATIVE
from ..triton_kernels import bsr_linear as _linear
from ..triton_kernels import bsr_sdd as _sdd

__all__ = ["bsr_linear_fwd", "bsr_linear_dx", "bsr_linear_dw", "bsr_plasticity_"]


def bsr_linear_fwd(
    *,
    x: torch.Tensor,
    values: torch.Tensor,
    crow: torch.Tensor,
    col: torch.Tensor,
    row: torch.Tensor,
    synapse_mask: torch.Tensor | None,
    sign: torch.Tensor | None,
    n_out: int,
    sigma: float,
    seed: int,
    noise_mode: str,
    post_bias: torch.Tensor | None,
    post_moments: torch.Tensor | None,
) -> torch.Tensor:
    """``y = x @ W_eff^T`` over the block rows (``row`` is the CPU backend's view, unused here)."""
    return _linear.bsr_linear_fwd(
        x,
        values,
        crow,
        col,
        synapse_mask,
        sign,
        n_out,
        sigma=sigma,
        seed=seed,
        multiplicative=noise_mode == MULTIPLICATIVE,
        post_bias=post_bias,
        post_moments=post_moments,
    )


def bsr_linear_dx(
    *,
    dy: torch.Tensor,
    values: torch.Tensor,
    ccol_t: torch.Tensor,
    row_t: torch.Tensor,
    perm_t: torch.Tensor,
    synapse_mask: torch.Tensor | None,
    sign: torch.Tensor | None,
    n_in: int,
    sigma: float,
    seed: int,
    noise_mode: str,
) -> torch.Tensor:
    """``dx = dy @ W_eff`` over the transposed index."""
    return _linear.bsr_linear_dx(
        dy,
        values,
        ccol_t,
        row_t,
        perm_t,
        synapse_mask,
        sign,
        n_in,
        sigma=sigma,
        seed=seed,
        multiplicative=noise_mode == MULTIPLICATIVE,
    )


def bsr_linear_dw(
    *,
    dy: torch.Tensor | None,
    x: torch.Tensor,
    row: torch.Tensor,
    col: torch.Tensor,
    block_size: int,
    out_dtype: torch.dtype,
    synapse_mask: torch.Tensor | None,
    sign: torch.Tensor | None,
    sigma: float,
    seed: int,
    noise_mode: str,
    post: torch.Tensor | None,
    post_bias: torch.Tensor | None,
    corr: torch.Tensor | None,
) -> torch.Tensor | None:
    """Weight gradient and Hebbian correlation in one SDD pass."""
    return _sdd.bsr_linear_dw(
        dy,
        x,
        row,
        col,
        block_size,
        out_dtype,
        synapse_mask,
        sign,
        sigma=sigma,
        seed=seed,
        multiplicative=noise_mode == MULTIPLICATIVE,
        post=post,
        post_bias=post_bias,
        corr=corr,
    )


def bsr_plasticity_(
    *,
    values: torch.Tensor,
    corr: torch.Tensor,
    row: torch.Tensor,
    synapse_mask: torch.Tensor | None,
    post_sq: torch.Tensor,
    scale: torch.Tensor | None,
    eta: float,
    oja: float,
) -> None:
    """The plasticity update in place."""
    _sdd.bsr_plasticity_(
        values, corr, row, synapse_mask, post_sq.float(), None if scale is None else scale.float(), eta, oja
    )
