"""Custom ops (``torch.library.custom_op``) for block-sparse connectome layers.

Each op has a fake (shape-only) registration for ``torch.compile`` and the forward op has an
autograd registration whose backward calls the two gradient ops, so all three appear as opaque
nodes in compiled graphs. The implementation dispatches per call: Triton kernels for CUDA tensors
(and for CPU tensors under ``BIONIC_SPARSE_BACKEND=triton`` with ``TRITON_INTERPRET=1``), the
PyTorch path in :mod:`bionic_sparse._torch_path` otherwise; the shared biology is in
:mod:`bionic_sparse.plasticity`.

Index arguments are the int32 views of :class:`bionic_sparse.BlockSparseMatrix`
(``crow, col, row, ccol_t, row_t, perm_t``); every op takes all of them so that the backends can
pick the view they need. Validation happens one layer up, in :mod:`bionic_sparse.functional`.
"""

from typing import Optional

import torch
from torch import Tensor

from . import _torch_path as tp
from .backend import cpu_method, use_triton
from .plasticity import MULTIPLICATIVE, homeostatic_scale

__all__ = ["bsr_linear", "bsr_linear_dx", "bsr_linear_dw", "bsr_hebbian", "bsr_hebbian_"]


def _method(values: Tensor, crow: Tensor, ccol_t: Tensor) -> str:
    return cpu_method(values.shape[-1], values.shape[0], crow.numel() - 1, ccol_t.numel() - 1)


@torch.library.custom_op("bionic_sparse::bsr_linear", mutates_args=())
def bsr_linear(
    x: Tensor,
    values: Tensor,
    crow: Tensor,
    col: Tensor,
    row: Tensor,
    ccol_t: Tensor,
    row_t: Tensor,
    perm_t: Tensor,
    synapse_mask: Optional[Tensor],
    sign: Optional[Tensor],
    bias: Optional[Tensor],
    n_out: int,
    sigma: float,
    seed: int,
    noise_mode: str,
) -> Tensor:
    """``y[..., n_out] = x @ W_eff^T + bias`` (DSD over the block-row index)."""
    if use_triton(x):
        from .triton_kernels.bsr_linear import bsr_linear_fwd

        return bsr_linear_fwd(
            x=x,
            values=values,
            crow=crow,
            col=col,
            synapse_mask=synapse_mask,
            sign=sign,
            bias=bias,
            n_out=n_out,
            sigma=sigma,
            seed=seed,
            multiplicative=noise_mode == MULTIPLICATIVE,
        )
    w = tp.effective_values(values, synapse_mask, sigma, seed, noise_mode)
    return tp.linear_fwd(x, w, row, col, sign, bias, n_out, _method(values, crow, ccol_t))


@bsr_linear.register_fake
def _(x, values, crow, col, row, ccol_t, row_t, perm_t, synapse_mask, sign, bias, n_out, sigma, seed, noise_mode):
    return x.new_empty(*x.shape[:-1], n_out)


@torch.library.custom_op("bionic_sparse::bsr_linear_dx", mutates_args=())
def bsr_linear_dx(
    dy: Tensor,
    values: Tensor,
    crow: Tensor,
    col: Tensor,
    row: Tensor,
    ccol_t: Tensor,
    row_t: Tensor,
    perm_t: Tensor,
    synapse_mask: Optional[Tensor],
    sign: Optional[Tensor],
    n_in: int,
    sigma: float,
    seed: int,
    noise_mode: str,
) -> Tensor:
    """``dx[..., n_in] = dy @ W_eff`` (DSD over the transposed index, same noise as forward)."""
    if use_triton(dy):
        from .triton_kernels.bsr_linear import bsr_linear_dx as triton_dx

        return triton_dx(
            dy=dy,
            values=values,
            ccol_t=ccol_t,
            row_t=row_t,
            perm_t=perm_t,
            synapse_mask=synapse_mask,
            sign=sign,
            n_in=n_in,
            sigma=sigma,
            seed=seed,
            multiplicative=noise_mode == MULTIPLICATIVE,
        )
    w = tp.effective_values(values, synapse_mask, sigma, seed, noise_mode)
    return tp.linear_dx(dy, w, row, col, sign, n_in, _method(values, crow, ccol_t))


@bsr_linear_dx.register_fake
def _(dy, values, crow, col, row, ccol_t, row_t, perm_t, synapse_mask, sign, n_in, sigma, seed, noise_mode):
    return dy.new_empty(*dy.shape[:-1], n_in)


@torch.library.custom_op("bionic_sparse::bsr_linear_dw", mutates_args=())
def bsr_linear_dw(
    dy: Tensor,
    x: Tensor,
    values: Tensor,
    crow: Tensor,
    col: Tensor,
    row: Tensor,
    ccol_t: Tensor,
    row_t: Tensor,
    perm_t: Tensor,
    synapse_mask: Optional[Tensor],
    sign: Optional[Tensor],
    sigma: float,
    seed: int,
    noise_mode: str,
) -> Tensor:
    """``dvalues[nnzb, b, b]``: gradient on the stored blocks only, zero off the synapse mask."""
    if use_triton(dy):
        from .triton_kernels.bsr_sdd import bsr_sdd

        dw, _ = bsr_sdd(
            dy=dy,
            x=x,
            values=values,
            row=row,
            col=col,
            synapse_mask=synapse_mask,
            sign=sign,
            sigma=sigma,
            seed=seed,
            multiplicative=noise_mode == MULTIPLICATIVE,
        )
        return dw
    b = values.shape[-1]
    dw = tp.linear_dw(dy, x, row, col, sign, b, _method(values, crow, ccol_t)).to(values.dtype)
    noise = tp.noise_factor(values, sigma, seed, noise_mode)
    if noise is not None and noise_mode == MULTIPLICATIVE:
        dw = dw * (1.0 + noise)
    if synapse_mask is not None:
        dw = dw * synapse_mask
    return dw


@bsr_linear_dw.register_fake
def _(dy, x, values, crow, col, row, ccol_t, row_t, perm_t, synapse_mask, sign, sigma, seed, noise_mode):
    return torch.empty_like(values)


def _setup_context(ctx, inputs, output):
    (x, values, crow, col, row, ccol_t, row_t, perm_t, synapse_mask, sign, bias, n_out, sigma, seed, noise_mode) = (
        inputs
    )
    ctx.save_for_backward(x, values, crow, col, row, ccol_t, row_t, perm_t, synapse_mask, sign)
    ctx.noise = (sigma, seed, noise_mode)
    ctx.has_bias = bias is not None


def _backward(ctx, dy):
    x, values, crow, col, row, ccol_t, row_t, perm_t, synapse_mask, sign = ctx.saved_tensors
    sigma, seed, noise_mode = ctx.noise
    # NOTE: y.sum().backward() hands in a stride-0 expanded dy; every backend reads it densely.
    dy = dy.contiguous()
    index = (crow, col, row, ccol_t, row_t, perm_t)
    dx = dvalues = dbias = None
    if ctx.needs_input_grad[0]:
        dx = bsr_linear_dx(dy, values, *index, synapse_mask, sign, x.shape[-1], sigma, seed, noise_mode)
    if ctx.needs_input_grad[1]:
        dvalues = bsr_linear_dw(dy, x, values, *index, synapse_mask, sign, sigma, seed, noise_mode)
    if ctx.has_bias and ctx.needs_input_grad[10]:
        dbias = dy.reshape(-1, dy.shape[-1]).sum(0)
    return dx, dvalues, None, None, None, None, None, None, None, None, dbias, None, None, None, None


bsr_linear.register_autograd(_backward, setup_context=_setup_context)


def _hebbian(values, pre, post, crow, col, row, synapse_mask, post_rate, eta, oja, target_rate, homeo_rate):
    if use_triton(values):
        from .triton_kernels.bsr_sdd import bsr_hebbian_update

        return bsr_hebbian_update(
            values=values,
            pre=pre,
            post=post,
            row=row,
            col=col,
            synapse_mask=synapse_mask,
            row_scale=None
            if homeo_rate == 0.0 or post_rate is None
            else homeostatic_scale(post_rate, target_rate, homeo_rate),
            eta=eta,
            oja=oja,
        )
    method = cpu_method(values.shape[-1], values.shape[0], crow.numel() - 1, -(-pre.shape[-1] // values.shape[-1]))
    return tp.hebbian_update(
        values, pre, post, row, col, synapse_mask, post_rate, eta, oja, target_rate, homeo_rate, method
    )


@torch.library.custom_op("bionic_sparse::bsr_hebbian", mutates_args=())
def bsr_hebbian(
    values: Tensor,
    pre: Tensor,
    post: Tensor,
    crow: Tensor,
    col: Tensor,
    row: Tensor,
    synapse_mask: Optional[Tensor],
    post_rate: Optional[Tensor],
    eta: float,
    oja: float,
    target_rate: float,
    homeo_rate: float,
) -> Tensor:
    """New ``values`` after a Hebbian (Oja) + homeostatic step; see ``_torch_path.hebbian_update``."""
    return _hebbian(values, pre, post, crow, col, row, synapse_mask, post_rate, eta, oja, target_rate, homeo_rate)


@bsr_hebbian.register_fake
def _(values, pre, post, crow, col, row, synapse_mask, post_rate, eta, oja, target_rate, homeo_rate):
    return torch.empty_like(values)


@torch.library.custom_op("bionic_sparse::bsr_hebbian_", mutates_args=("values",))
def bsr_hebbian_(
    values: Tensor,
    pre: Tensor,
    post: Tensor,
    crow: Tensor,
    col: Tensor,
    row: Tensor,
    synapse_mask: Optional[Tensor],
    post_rate: Optional[Tensor],
    eta: float,
    oja: float,
    target_rate: float,
    homeo_rate: float,
) -> None:
    """In-place :func:`bsr_hebbian` on ``values``."""
    values.copy_(
        _hebbian(values, pre, post, crow, col, row, synapse_mask, post_rate, eta, oja, target_rate, homeo_rate)
    )


@bsr_hebbian_.register_fake
def _(values, pre, post, crow, col, row, synapse_mask, post_rate, eta, oja, target_rate, homeo_rate):
    return None
