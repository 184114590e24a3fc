"""Custom ops (``torch.library.custom_op``) of the block-sparse engine: registration and dispatch.

Each op has a fake (shape-only) registration for ``torch.compile``; ``bsr_linear`` has an
autograd registration whose backward calls ``bsr_linear_dx`` and ``bsr_linear_dw``, so every op
appears as an opaque node in compiled graphs. Each op hands its arguments to the same function of
the backend that :func:`bionic_sparse.backends.for_tensor` picks (Triton for CUDA tensors, the
PyTorch path otherwise); the contract is in :mod:`bionic_sparse.backends`.

The first arguments are the tensors the op differentiates or updates; everything after ``*`` is
keyword-only: the index views of :class:`bionic_sparse.BlockSparseMatrix` the op needs, the
synapse mask, Dale's sign and the plasticity buffers; the keyword-only scalars are the noise
``(sigma, seed, multiplicative)`` and output widths.
Arguments are validated one layer up, in :mod:`bionic_sparse.functional`.

Plasticity in a training step: ``bsr_linear`` given a ``corr`` buffer also returns the activity
statistics of ``post = y + post_bias`` from its forward pass, and its backward writes the Hebbian
correlation into ``corr`` from the same tiles as the weight gradient (one pass); after the
optimiser step ``bsr_plasticity_`` applies the update. Without a backward pass,
``bsr_linear_dw_corr`` without ``dy`` computes the correlation from recorded activities. The weight
gradient is two ops, ``bsr_linear_dw`` (pure) and ``bsr_linear_dw_corr`` (writes ``corr``), so that
a compiled training graph never holds a mutation of an absent tensor. The noise seed is a 0-dim
int64 CPU tensor: compiled graphs take it as an input instead of baking a new constant per step.
"""

from typing import Optional

import torch
from torch import Tensor

from .backends import for_tensor

__all__ = ["bsr_linear", "bsr_linear_dx", "bsr_linear_dw", "bsr_linear_dw_corr", "bsr_plasticity_"]


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
    post_bias: Optional[Tensor],
    corr: Optional[Tensor],
    seed: Tensor,
    *,
    n_out: int,
    sigma: float,
    multiplicative: bool,
) -> tuple[Tensor, Tensor]:
    """``(y[..., n_out], moments)``: ``y = x @ W_eff^T`` (DSD over the block rows; the bias is the
    caller's). The transposed views ``ccol_t, row_t, perm_t`` are carried for the input gradient.

    Recording for plasticity (``corr`` given, ``[nnzb, b, b]``): ``moments`` is the ``[2, n_out]``
    activity statistics of ``post = y + post_bias`` and the backward pass writes the Hebbian
    correlation into ``corr``. Otherwise ``moments`` is empty.
    """
    moments = x.new_zeros(*_moments_shape(corr, n_out), dtype=_stats_dtype(x))
    y = for_tensor(x).bsr_linear_fwd(
        x=x,
        values=values,
        crow=crow,
        col=col,
        synapse_mask=synapse_mask,
        sign=sign,
        n_out=n_out,
        sigma=sigma,
        seed=int(seed),
        multiplicative=multiplicative,
        post_bias=post_bias,
        post_moments=moments if corr is not None else None,
    )
    return (y.clone() if y._base is not None else y), moments  # never a view: in-place ops may follow


def _moments_shape(corr: Optional[Tensor], n_out: int) -> tuple[int, ...]:
    return (2, n_out) if corr is not None else (0,)


def _stats_dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


@bsr_linear.register_fake
def _(x, values, crow, col, row, ccol_t, row_t, perm_t, synapse_mask, sign, post_bias, corr, seed, *, n_out, **_):
    return x.new_empty(*x.shape[:-1], n_out), x.new_empty(*_moments_shape(corr, n_out), dtype=_stats_dtype(x))


@torch.library.custom_op("bionic_sparse::bsr_linear_dx", mutates_args=())
def bsr_linear_dx(
    dy: Tensor,
    values: Tensor,
    crow: Tensor,
    col: Tensor,
    ccol_t: Tensor,
    row_t: Tensor,
    perm_t: Tensor,
    synapse_mask: Optional[Tensor],
    sign: Optional[Tensor],
    seed: Tensor,
    *,
    n_in: int,
    sigma: float,
    multiplicative: bool,
) -> Tensor:
    """``dx[..., n_in] = dy @ W_eff`` (DSD over the transposed index, same noise as forward; for
    element storage, without a transposed index, a scatter over ``crow, col``)."""
    return for_tensor(dy).bsr_linear_dx(
        dy=dy,
        values=values,
        crow=crow,
        col=col,
        ccol_t=ccol_t,
        row_t=row_t,
        perm_t=perm_t,
        synapse_mask=synapse_mask,
        sign=sign,
        n_in=n_in,
        sigma=sigma,
        seed=int(seed),
        multiplicative=multiplicative,
    )


@bsr_linear_dx.register_fake
def _(dy, values, *_, n_in, **__):
    return dy.new_empty(*dy.shape[:-1], n_in)


@torch.library.custom_op("bionic_sparse::bsr_linear_dw", mutates_args=())
def bsr_linear_dw(
    dy: Tensor,
    x: Tensor,
    values: Tensor,
    crow: Tensor,
    row: Tensor,
    col: Tensor,
    synapse_mask: Optional[Tensor],
    sign: Optional[Tensor],
    seed: Tensor,
    *,
    sigma: float,
    multiplicative: bool,
) -> Tensor:
    """``dvalues[nnzb, b, b]`` on the stored blocks (zero off the synapse mask): the SDD of the
    backward pass without plasticity (a pure op: what ``torch.compile`` training graphs hold)."""
    return _dw(dy, x, values, crow, row, col, synapse_mask, sign, None, None, None, sigma, seed, multiplicative)


@bsr_linear_dw.register_fake
def _(dy, x, values, *_, **__):
    return torch.empty_like(values)


@torch.library.custom_op("bionic_sparse::bsr_linear_dw_corr", mutates_args=("corr",))
def bsr_linear_dw_corr(
    dy: Optional[Tensor],
    x: Tensor,
    values: Tensor,
    crow: Tensor,
    row: Tensor,
    col: Tensor,
    synapse_mask: Optional[Tensor],
    sign: Optional[Tensor],
    post: Tensor,
    post_bias: Optional[Tensor],
    corr: Tensor,
    seed: Tensor,
    *,
    sigma: float,
    multiplicative: bool,
) -> Tensor:
    """:func:`bsr_linear_dw` fused with the Hebbian correlation ``(post + post_bias)^T x / B``,
    written into ``corr`` from the same tiles. Without ``dy`` (plasticity without a backward pass)
    only the correlation is computed and the returned tensor is empty."""
    return _dw(dy, x, values, crow, row, col, synapse_mask, sign, post, post_bias, corr, sigma, seed, multiplicative)


@bsr_linear_dw_corr.register_fake
def _(dy, x, values, *_, **__):
    return torch.empty_like(values) if dy is not None else values.new_empty(0)


def _dw(
    dy, x, values, crow, row, col, synapse_mask, sign, post, post_bias, corr, sigma, seed, multiplicative
) -> Tensor:
    dw = for_tensor(x).bsr_linear_dw(
        dy=dy,
        x=x,
        crow=crow,
        row=row,
        col=col,
        block_size=values.shape[-1],
        out_dtype=values.dtype,
        synapse_mask=synapse_mask,
        sign=sign,
        sigma=sigma,
        seed=int(seed),
        multiplicative=multiplicative,
        post=post,
        post_bias=post_bias,
        corr=corr,
    )
    return values.new_empty(0) if dw is None else dw


def _setup_context(ctx, inputs, keyword_only_inputs, output):
    x, values, crow, col, row, ccol_t, row_t, perm_t, synapse_mask, sign, post_bias, corr, seed = inputs
    y, moments = output
    ctx.mark_non_differentiable(moments)
    ctx.n_inputs = len(inputs)
    # the correlation buffer is written by the backward, so it is held, not saved (a saved tensor
    # must not change before backward unpacks it)
    ctx.corr = corr
    ctx.save_for_backward(x, values, crow, row, col, ccol_t, row_t, perm_t, synapse_mask, sign, post_bias)
    ctx.post = y.detach() if corr is not None else None
    ctx.seed = seed
    ctx.noise = keyword_only_inputs  # sigma, multiplicative (n_out is the output's width)


def _backward(ctx, dy, _):
    x, values, crow, row, col, ccol_t, row_t, perm_t, synapse_mask, sign, post_bias = ctx.saved_tensors
    noise = {name: ctx.noise[name] for name in ("sigma", "multiplicative")}
    seed = ctx.seed
    if torch.is_grad_enabled() and dy.requires_grad and not torch.compiler.is_compiling():
        raise NotImplementedError(
            "bionic_sparse.bsr_linear (SparseConnectomeLinear) has no second derivative: backward with "
            "create_graph=True through it (gradient penalties, MAML) is not supported"
        )
    # NOTE: y.sum().backward() hands in a stride-0 expanded dy; every backend reads it densely.
    dy = dy.contiguous()
    dx = dvalues = None
    if ctx.needs_input_grad[0]:
        dx = bsr_linear_dx(
            dy, values, crow, col, ccol_t, row_t, perm_t, synapse_mask, sign, seed, n_in=x.shape[-1], **noise
        )
    if ctx.needs_input_grad[1]:
        coo = (dy, x, values, crow, row, col, synapse_mask, sign)
        if ctx.corr is None:
            dvalues = bsr_linear_dw(*coo, seed, **noise)
        else:
            dvalues = bsr_linear_dw_corr(*coo, ctx.post, post_bias, ctx.corr, seed, **noise)
    return (dx, dvalues) + (None,) * (ctx.n_inputs - 2)  # only x and values are differentiable


bsr_linear.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("bionic_sparse::bsr_plasticity_", mutates_args=("values",))
def bsr_plasticity_(
    values: Tensor,
    corr: Tensor,
    crow: Tensor,
    row: Tensor,
    synapse_mask: Optional[Tensor],
    post_sq: Tensor,
    scale: Optional[Tensor],
    *,
    eta: float,
    oja: float,
) -> None:
    """``values <- plasticity_rule(values, corr, post_sq, scale) * synapse_mask`` in place
    (:func:`bionic_sparse.plasticity.plasticity_rule`); ``post_sq`` and ``scale`` are ``[n_out]``."""
    for_tensor(values).bsr_plasticity_(
        values=values,
        corr=corr,
        crow=crow,
        row=row,
        synapse_mask=synapse_mask,
        post_sq=post_sq,
        scale=scale,
        eta=eta,
        oja=oja,
    )


@bsr_plasticity_.register_fake
def _(values, *_, **__):
    return None
