"""Weight gradient on the mask blocks (SDD) fused with the Hebbian correlation, and the plasticity
update that applies it.

For every stored block ``k = (r, c)``, one pass over the batch computes from the same tiles:

* the gradient ``dW[k] = (dy[:, r]^T (x[:, c] * sign[c])) * M[k] * (1 + sigma xi[k])`` (the noise
  factor only for multiplicative noise);
* the Hebbian correlation ``C[k] = post[:, r]^T x[:, c] / B`` with ``post = y + post_bias``
  (the raw presynaptic ``x``: with Dale's law the weights are magnitudes).

The plasticity kernel then applies ``W' = (W + eta (C - oja q[r, None] W)) s[r, None]`` in place,
with entries whose sign would flip set to zero and ``M[k]`` applied (``q = mean_B post^2``,
``s`` the homeostatic scale): in a training step after the optimiser step, with no second pass
over the activities.

One program per block, looping over the batch in ``BM`` chunks. When there are too few blocks to
fill the GPU the batch is split over ``SPLIT`` programs that add into fp32 outputs atomically.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    INTERPRET,
    check,
    check_index,
    check_values,
    empty,
    flat2d,
    input_precision,
    launch,
    m_bucket,
    mask_u8,
    num_sms,
)


@triton.heuristics(
    {
        "HAS_MASK": lambda a: a["synapse_mask"] is not None,
        "HAS_SIGN": lambda a: a["sign"] is not None,
        "HAS_NOISE": lambda a: a["sigma"] != 0.0 and a["MULTIPLICATIVE"],
        "HAS_GRAD": lambda a: a["dy"] is not None,
        "HAS_CORR": lambda a: a["corr"] is not None,
        "HAS_POST_BIAS": lambda a: a["post_bias"] is not None,
    }
)
@triton.jit
def _bsr_linear_bwd_dw_kernel(
    dy,
    x,
    post,
    post_bias,
    row,
    col,
    synapse_mask,
    sign,
    dw,
    corr,
    M,
    N,
    K,
    stride_dym,
    stride_dyn,
    stride_xm,
    stride_xk,
    stride_pm,
    stride_pn,
    seed,
    sigma,
    inv_batch,
    chunk,
    M_BUCKET,
    BS: tl.constexpr,
    BM: tl.constexpr,
    MULTIPLICATIVE: tl.constexpr,
    PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_SIGN: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    HAS_GRAD: tl.constexpr,
    HAS_CORR: tl.constexpr,
    HAS_POST_BIAS: tl.constexpr,
):
    """Program (block ``k``, batch split ``i_s``): ``acc = dy^T (x * sign)``, ``hacc = post^T x``."""
    k = tl.program_id(0)
    i_s = tl.program_id(1)
    i_r = tl.load(row + k)
    i_c = tl.load(col + k)
    o_b = tl.arange(0, BS)
    o_n = i_r * BS + o_b  # [BS] outputs (postsynaptic)
    o_k = i_c * BS + o_b  # [BS] inputs (presynaptic)
    m_n = o_n < N
    m_k = o_k < K
    if HAS_SIGN:
        b_s = tl.load(sign + o_k, mask=m_k, other=0.0).to(tl.float32)
    if HAS_POST_BIAS:
        b_pb = tl.load(post_bias + o_n, mask=m_n, other=0.0).to(tl.float32)
    acc = tl.zeros([BS, BS], dtype=tl.float32)
    hacc = tl.zeros([BS, BS], dtype=tl.float32)
    m_start = i_s * chunk
    m_end = tl.minimum(m_start + chunk, M)
    for m0 in range(m_start, m_end, BM):
        o_m = (m0 + tl.arange(0, BM)).to(tl.int64)
        m_m = o_m < m_end
        p_x = x + o_m[:, None] * stride_xm + o_k[None, :] * stride_xk
        b_x = tl.load(p_x, mask=m_m[:, None] & m_k[None, :], other=0.0)  # [BM, BS in]
        if HAS_GRAD:
            p_dy = dy + o_m[:, None] * stride_dym + o_n[None, :] * stride_dyn
            b_dy = tl.load(p_dy, mask=m_m[:, None] & m_n[None, :], other=0.0)  # [BM, BS out]
            b_xs = b_x
            if HAS_SIGN:
                b_xs = (b_x.to(tl.float32) * b_s[None, :]).to(b_x.dtype)
            acc = tl.dot(tl.trans(b_dy), b_xs, acc, input_precision=PRECISION)
        if HAS_CORR:
            p_p = post + o_m[:, None] * stride_pm + o_n[None, :] * stride_pn
            m_p = m_m[:, None] & m_n[None, :]
            b_p = tl.load(p_p, mask=m_p, other=0.0)  # [BM, BS out]
            if HAS_POST_BIAS:
                b_p = tl.where(m_p, b_p.to(tl.float32) + b_pb[None, :], 0.0)
            hacc = tl.dot(tl.trans(b_p.to(b_x.dtype)), b_x, hacc, input_precision=PRECISION)
    # NOTE: block bases stay int32: the launcher guarantees nnzb * b * b < 2**31 (synapse ids).
    offs = k * (BS * BS) + o_b[:, None] * BS + o_b[None, :]
    if HAS_GRAD:
        if HAS_NOISE:
            acc = acc * (1.0 + sigma * tl.randn(seed, offs))
        if HAS_MASK:
            acc = tl.where(tl.load(synapse_mask + offs) != 0, acc, 0.0)
        if SPLIT > 1:
            tl.atomic_add(dw + offs, acc)
        else:
            tl.store(dw + offs, acc.to(dw.dtype.element_ty))
    if HAS_CORR:
        if SPLIT > 1:
            tl.atomic_add(corr + offs, hacc * inv_batch)
        else:
            tl.store(corr + offs, hacc * inv_batch)


@triton.heuristics({"HAS_MASK": lambda a: a["synapse_mask"] is not None, "HAS_SCALE": lambda a: a["scale"] is not None})
@triton.jit
def _bsr_plasticity_kernel(
    values,
    corr,
    row,
    synapse_mask,
    post_sq,
    scale,
    N,
    eta,
    oja,
    BS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):
    """Block ``k`` in place: ``W' = (W + eta (C - oja q W)) s``, sign flips to 0, masked.

    Each program reads its own block before writing it, so the in-place update is race-free."""
    k = tl.program_id(0)
    o_b = tl.arange(0, BS)
    o_n = tl.load(row + k) * BS + o_b  # [BS] outputs
    m_n = o_n < N
    offs = k * (BS * BS) + o_b[:, None] * BS + o_b[None, :]
    b_w = tl.load(values + offs).to(tl.float32)  # [BS, BS]
    b_q = tl.load(post_sq + o_n, mask=m_n, other=0.0).to(tl.float32)
    b_new = b_w + eta * (tl.load(corr + offs) - oja * b_q[:, None] * b_w)
    if HAS_SCALE:
        b_new = b_new * tl.load(scale + o_n, mask=m_n, other=1.0).to(tl.float32)[:, None]
    b_new = tl.where(b_new * b_w < 0, 0.0, b_new)
    if HAS_MASK:
        b_new = tl.where(tl.load(synapse_mask + offs) != 0, b_new, 0.0)
    tl.store(values + offs, b_new.to(values.dtype.element_ty))


def _split(nnzb: int, m: int, device: torch.device) -> int:
    """Batch split so that ~8 programs per SM run, each over at least 256 rows of the batch."""
    if INTERPRET:
        return 1
    want = 8 * num_sms(device)
    if nnzb >= want:
        return 1
    return int(max(1, min(triton.cdiv(want, max(nnzb, 1)), triton.cdiv(m, 256), 64)))


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
    sigma: float = 0.0,
    seed: int = 0,
    multiplicative: bool = True,
    post: torch.Tensor | None = None,
    post_bias: torch.Tensor | None = None,
    corr: torch.Tensor | None = None,
    split: int | None = None,
) -> torch.Tensor | None:
    """Weight gradient ``dW[nnzb, b, b]`` in ``out_dtype`` (``None`` when ``dy`` is ``None``) and,
    when ``corr`` is given, the Hebbian correlation written into it, in one pass.

    Args:
        dy: ``[..., N]`` output gradient or ``None`` (correlation only). x: ``[..., K]`` presynaptic input.
        row/col: int32 COO block coordinates ``[nnzb]``.
        post: ``[..., N]`` postsynaptic activity (``y`` of the forward) and post_bias ``[N]`` or
            ``None``: the correlation uses ``post + post_bias``.
        corr: contiguous fp32 ``[nnzb, b, b]`` output of ``(post + post_bias)^T x / B``.
        split: batch split (default: chosen from the number of blocks and SMs).
    """
    nnzb = row.numel()
    check_index("row", row, nnzb)
    check_index("col", col, nnzb)
    check(dy is not None or corr is not None, "bsr_linear_dw needs dy, corr or both")
    check(corr is None or post is not None, "corr needs post")
    x2d = flat2d(x, "x")
    M, K = x2d.shape
    n_out = (dy if dy is not None else post).shape[-1]
    dy2d = flat2d(dy, "dy") if dy is not None else None
    post2d = flat2d(post, "post") if corr is not None else None
    for name, t in (("dy", dy2d), ("post", post2d)):
        check(
            t is None or t.shape == (M, n_out),
            f"{name} must be [{M}, {n_out}], got {None if t is None else tuple(t.shape)}",
        )
    b = block_size
    if corr is not None:
        check_values(corr)
        check(corr.shape == (nnzb, b, b) and corr.dtype == torch.float32, f"corr must be fp32 [{nnzb}, {b}, {b}]")
    check(post_bias is None or post_bias.shape == (n_out,), f"post_bias must have shape ({n_out},)")
    split = split or _split(nnzb, M, x.device)
    dw = None
    if dy is not None:
        dw = (
            torch.zeros((nnzb, b, b), dtype=torch.float32, device=x.device)
            if split > 1
            else empty((nnzb, b, b), out_dtype, x.device)
        )
        check_values(dw)
    if corr is not None and split > 1:
        corr.zero_()
    if nnzb == 0 or M == 0:
        if corr is not None:
            corr.zero_()
        return None if dw is None else dw.zero_().to(out_dtype)
    dummy = x2d
    launch(
        _bsr_linear_bwd_dw_kernel,
        "sdd",
        lambda meta: (nnzb, split),
        b,
        x.dtype,
        key=["M_BUCKET", "BS", "SPLIT"],
        reset=[n for n, t in (("dw", dw), ("corr", corr)) if t is not None] if split > 1 else None,
        dy=dy2d,
        x=x2d,
        post=post2d,
        post_bias=post_bias,
        row=row,
        col=col,
        synapse_mask=mask_u8(synapse_mask, dw if dw is not None else corr),
        sign=sign,
        dw=dw,
        corr=corr,
        M=M,
        N=n_out,
        K=K,
        stride_dym=(dy2d if dy2d is not None else dummy).stride(0),
        stride_dyn=(dy2d if dy2d is not None else dummy).stride(1),
        stride_xm=x2d.stride(0),
        stride_xk=x2d.stride(1),
        stride_pm=(post2d if post2d is not None else dummy).stride(0),
        stride_pn=(post2d if post2d is not None else dummy).stride(1),
        seed=seed,
        sigma=float(sigma),
        inv_batch=1.0 / M,
        chunk=triton.cdiv(M, split),
        M_BUCKET=m_bucket(M),
        BS=b,
        MULTIPLICATIVE=multiplicative,
        PRECISION=input_precision(x.dtype),
        SPLIT=split,
    )
    if dw is not None and dw.dtype != out_dtype:
        dw = dw.to(out_dtype)
    return dw


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
    """Apply the plasticity update to ``values[nnzb, b, b]`` in place from the fp32 correlation
    ``corr`` (same shape); ``post_sq`` and ``scale`` are ``[n_out]`` (``scale`` may be ``None``)."""
    b = check_values(values)
    nnzb = values.shape[0]
    check_index("row", row, nnzb)
    check(corr.shape == values.shape and corr.is_contiguous(), "corr must be contiguous and match values")
    n_out = post_sq.shape[0]
    check(post_sq.dim() == 1 and (scale is None or scale.shape == (n_out,)), "post_sq and scale must be [n_out]")
    post_sq = post_sq.float()
    scale = None if scale is None else scale.float()
    if nnzb == 0:
        return
    _bsr_plasticity_kernel[(nnzb,)](
        values=values,
        corr=corr,
        row=row,
        synapse_mask=mask_u8(synapse_mask, values),
        post_sq=post_sq,
        scale=scale,
        N=n_out,
        eta=float(eta),
        oja=float(oja),
        BS=b,
        num_warps=8 if b >= 64 else 4,
    )
