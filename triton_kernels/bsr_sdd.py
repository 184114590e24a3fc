"""Weight gradient on the mask blocks (SDD) fused with the Hebbian + homeostatic update.

For every stored block ``k = (r, c)``:

* gradient ``dW[k] = (dy[:, r]^T (x[:, c] * sign[c])) * M[k] * (1 + sigma xi[k])`` (the noise
  factor only for multiplicative noise);
* Hebbian ``H[k] = post[:, r]^T x[:, c] / B`` shares the loads of ``x``; the epilogue computes
  ``W' = (W + eta (H - oja * m2[r, None] * W)) * scale[r, None]``, clamps entries whose sign would
  flip to zero and applies ``M[k]``: the new values (never stored in place, so autotuning cannot
  apply the update twice).

One program per block, looping over the batch in ``BM`` chunks. When there are too few blocks to
fill the GPU the batch is split over ``SPLIT`` programs that add into fp32 buffers atomically; the
Hebbian epilogue then runs in a second, one-program-per-block pass over the summed ``H``.
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


@triton.jit
def _hebbian_epilogue(
    hacc,
    values,
    new_values,
    m2,
    scale,
    b_msk,
    offs,
    o_n,
    m_n,
    eta,
    oja,
    inv_batch,
    HAS_MASK: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):
    """``W' = (W + eta (H / B - oja m2 W)) * scale``, sign flips clamped to 0, masked; stored."""
    b_w = tl.load(values + offs).to(tl.float32)
    b_m2 = tl.load(m2 + o_n, mask=m_n, other=0.0)
    b_new = b_w + eta * (hacc * inv_batch - oja * b_m2[:, None] * b_w)
    if HAS_SCALE:
        b_new = b_new * tl.load(scale + o_n, mask=m_n, other=1.0)[:, None]
    b_new = tl.where(b_new * b_w < 0, 0.0, b_new)
    if HAS_MASK:
        b_new = tl.where(b_msk, b_new, 0.0)
    tl.store(new_values + offs, b_new.to(new_values.dtype.element_ty))


@triton.heuristics(
    {
        "HAS_MASK": lambda a: a["synapse_mask"] is not None,
        "HAS_SIGN": lambda a: a["sign"] is not None,
        "HAS_NOISE": lambda a: a["sigma"] != 0.0 and a["MULTIPLICATIVE"],
        "HAS_GRAD": lambda a: a["dy"] is not None,
        "HAS_HEBB": lambda a: a["post"] is not None,
        "HAS_SCALE": lambda a: a["scale"] is not None,
    }
)
@triton.jit
def _bsr_sdd_kernel(
    dy,
    x,
    post,
    values,
    row,
    col,
    synapse_mask,
    sign,
    dw,
    new_values,
    hsum,
    m2,
    scale,
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
    eta,
    oja,
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
    HAS_HEBB: tl.constexpr,
    HAS_SCALE: tl.constexpr,
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
        if HAS_HEBB:
            p_p = post + o_m[:, None] * stride_pm + o_n[None, :] * stride_pn
            b_p = tl.load(p_p, mask=m_m[:, None] & m_n[None, :], other=0.0).to(b_x.dtype)
            hacc = tl.dot(tl.trans(b_p), b_x, hacc, input_precision=PRECISION)
    # NOTE: block bases stay int32: the launcher guarantees nnzb * b * b < 2**31 (synapse ids).
    offs = k * (BS * BS) + o_b[:, None] * BS + o_b[None, :]
    b_msk = o_b[:, None] >= 0
    if HAS_MASK:
        b_msk = tl.load(synapse_mask + offs) != 0
    if HAS_GRAD:
        if HAS_NOISE:
            acc = acc * (1.0 + sigma * tl.randn(seed, offs))
        if HAS_MASK:
            acc = tl.where(b_msk, acc, 0.0)
        if SPLIT > 1:
            tl.atomic_add(dw + offs, acc)
        else:
            tl.store(dw + offs, acc.to(dw.dtype.element_ty))
    if HAS_HEBB:
        if SPLIT > 1:
            tl.atomic_add(hsum + offs, hacc)
        else:
            _hebbian_epilogue(
                hacc, values, new_values, m2, scale, b_msk, offs, o_n, m_n, eta, oja, inv_batch, HAS_MASK, HAS_SCALE
            )


@triton.heuristics({"HAS_MASK": lambda a: a["synapse_mask"] is not None, "HAS_SCALE": lambda a: a["scale"] is not None})
@triton.jit
def _bsr_hebbian_finish_kernel(
    hsum,
    values,
    row,
    synapse_mask,
    new_values,
    m2,
    scale,
    N,
    eta,
    oja,
    inv_batch,
    BS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):
    """Second pass of a batch-split Hebbian update: the epilogue on the summed ``H`` of block ``k``."""
    k = tl.program_id(0)
    o_b = tl.arange(0, BS)
    o_n = tl.load(row + k) * BS + o_b
    offs = k * (BS * BS) + o_b[:, None] * BS + o_b[None, :]
    b_msk = o_b[:, None] >= 0
    if HAS_MASK:
        b_msk = tl.load(synapse_mask + offs) != 0
    _hebbian_epilogue(
        tl.load(hsum + offs),
        values,
        new_values,
        m2,
        scale,
        b_msk,
        offs,
        o_n,
        o_n < N,
        eta,
        oja,
        inv_batch,
        HAS_MASK,
        HAS_SCALE,
    )


def _split(nnzb: int, m: int, device: torch.device) -> int:
    """Batch split so that ~8 programs per SM run, each over at least 256 rows of the batch."""
    if INTERPRET:
        return 1
    want = 8 * num_sms(device)
    if nnzb >= want:
        return 1
    return int(max(1, min(triton.cdiv(want, max(nnzb, 1)), triton.cdiv(m, 256), 64)))


def bsr_sdd(
    dy: torch.Tensor | None,
    x: torch.Tensor,
    values: torch.Tensor,
    row: torch.Tensor,
    col: torch.Tensor,
    synapse_mask: torch.Tensor | None,
    sign: torch.Tensor | None,
    sigma: float = 0.0,
    seed: int = 0,
    multiplicative: bool = True,
    post: torch.Tensor | None = None,
    eta: float = 0.0,
    oja: float = 1.0,
    row_scale: torch.Tensor | None = None,
    post_sq_sum: torch.Tensor | None = None,
    split: int | None = None,
    inplace: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Fused weight gradient and plasticity update: returns ``(dW or None, new values or None)``.

    Args:
        dy: ``[..., N]`` output gradient or ``None`` (plasticity only). x: ``[..., K]`` presynaptic input.
        values: ``[nnzb, b, b]`` weights (fp32 masters). row/col: int32 COO block coordinates.
        post: ``[..., N]`` postsynaptic activity for the Hebbian term, or ``None`` (gradient only).
        row_scale: ``[N]`` fp32 homeostatic scale of each postsynaptic row, or ``None``.
        post_sq_sum: ``[N]`` fp32 ``sum_batch post^2`` if the forward already computed it
            (``act_stats`` of ``bsr_linear_fwd``); otherwise it is computed here.
        split: batch split (default: chosen from the number of blocks and SMs).
        inplace: write the plasticity update into ``values`` (returned as the second output). Each
            program reads only its own block before writing it, so this is race-free.
    """
    b = check_values(values)
    nnzb = values.shape[0]
    check_index("row", row, nnzb)
    check_index("col", col, nnzb)
    check(dy is not None or post is not None, "bsr_sdd needs dy, post or both")
    x2d = flat2d(x, "x")
    M, K = x2d.shape
    n_out = (dy if dy is not None else post).shape[-1]
    dy2d = flat2d(dy, "dy") if dy is not None else None
    post2d = flat2d(post, "post") if post is not None else None
    for name, t in (("dy", dy2d), ("post", post2d)):
        check(
            t is None or t.shape[0] == M,
            f"{name} must have the batch of x ({M}), got {None if t is None else t.shape[0]}",
        )
    split = split or _split(nnzb, M, values.device)
    f32 = {"dtype": torch.float32, "device": values.device}
    dw = new_values = hsum = m2 = scale = None
    if dy is not None:
        dw = torch.zeros(values.shape, **f32) if split > 1 else empty(tuple(values.shape), values.dtype, values.device)
    if post is not None:
        new_values = values if inplace else empty(tuple(values.shape), values.dtype, values.device)
        if split > 1:
            hsum = torch.zeros(values.shape, **f32)
        if post_sq_sum is not None:
            check(post_sq_sum.shape == (n_out,), f"post_sq_sum must have shape ({n_out},)")
            m2 = post_sq_sum.float() / max(M, 1)
        else:
            m2 = post2d.float().pow(2).mean(0)
        if row_scale is not None:
            check(row_scale.shape == (n_out,), f"row_scale must have shape ({n_out},)")
            scale = row_scale.float()
    if nnzb == 0:
        return dw, new_values
    dummy = x2d
    kwargs = dict(
        dy=dy2d,
        x=x2d,
        post=post2d,
        values=values,
        row=row,
        col=col,
        synapse_mask=mask_u8(synapse_mask, values),
        sign=sign,
        dw=dw,
        new_values=new_values,
        hsum=hsum,
        m2=m2,
        scale=scale,
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
        eta=float(eta),
        oja=float(oja),
        inv_batch=1.0 / max(M, 1),
        chunk=triton.cdiv(M, split),
        M_BUCKET=m_bucket(M),
        BS=b,
        MULTIPLICATIVE=multiplicative,
        PRECISION=input_precision(x.dtype),
        SPLIT=split,
    )
    reset = [n for n, t in (("dw", dw), ("hsum", hsum)) if t is not None and split > 1]
    launch(
        _bsr_sdd_kernel,
        "sdd",
        lambda meta: (nnzb, split),
        b,
        x.dtype,
        key=["M_BUCKET", "BS", "SPLIT"],
        reset=reset or None,
        restore=["new_values"] if inplace and post is not None and split == 1 else None,
        **kwargs,
    )
    if hsum is not None:
        _bsr_hebbian_finish_kernel[(nnzb,)](
            hsum=hsum,
            values=values,
            row=row,
            synapse_mask=kwargs["synapse_mask"],
            new_values=new_values,
            m2=m2,
            scale=scale,
            N=n_out,
            eta=float(eta),
            oja=float(oja),
            inv_batch=1.0 / max(M, 1),
            BS=b,
            num_warps=8 if b >= 64 else 4,
        )
    if dw is not None and dw.dtype != values.dtype:
        dw = dw.to(values.dtype)
    return dw, new_values


def bsr_hebbian_update(
    values: torch.Tensor,
    pre: torch.Tensor,
    post: torch.Tensor,
    row: torch.Tensor,
    col: torch.Tensor,
    synapse_mask: torch.Tensor | None,
    row_scale: torch.Tensor | None,
    eta: float,
    oja: float,
) -> torch.Tensor:
    """Plasticity only (no gradient): the new values ``[nnzb, b, b]``."""
    _, new_values = bsr_sdd(
        None, pre, values, row, col, synapse_mask, None, post=post, eta=eta, oja=oja, row_scale=row_scale
    )
    return new_values
