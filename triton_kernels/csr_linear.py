"""Element-level CSR linear (block size 1): forward, input gradient, weight gradient fused with
the Hebbian correlation, and the plasticity update, for matrices whose synapses fill few blocks
(the whole-volume connectome, :meth:`bionic_sparse.BlockSparseMatrix.from_synapses`).

``W[n_out, n_in]`` is one CSR: ``crow[n_out + 1]``, ``col[nnz]`` (int32), ``values[nnz]`` (any
shape with ``nnz`` entries, e.g. ``[nnz, 1, 1]``). ``W_eff = noisy(W) * M * sign[col]`` with
``noisy(W) = W (1 + sigma xi)`` or ``W + sigma xi``, ``xi = tl.randn(seed, k)`` for synapse
``k``: the numbers of ``bionic_sparse.noise.synapse_noise(seed, nnz, 1)``, as the block kernels'
global synapse ids at ``b = 1``. Activations are batch-major ``[M, features]``; accumulation is
fp32.

There is no ``tl.dot`` tile at this granularity: every program owns one output neuron (its CSR
row) and a batch tile, gathers the inputs of ``BK`` synapses at a time and reduces with
``tl.sum``. The input gradient has no transposed index to run over (element storage keeps none:
it would cost 8 more bytes per synapse), so it scatters ``dy[:, i] W[i, col]`` into an fp32
buffer with atomic adds: correct to fp32 rounding, but the order of the additions, and so the
last bits of ``dx``, may differ from run to run on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import ACT_DTYPES, INTERPRET, check, check_index, check_post_stats, empty, flat2d, longest_first

# NOTE: BK synapses per gather: 64 keeps the [BM, BK] fp32 tile in registers at BM = 64 with 4 warps.
BK_DEFAULT = 64
BM_DEFAULT = 64
BM_INTERPRET = 16


def _check_csr(values: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, n_rows: int) -> int:
    nnz = values.numel()
    shape = tuple(values.shape)
    check(values.dim() == 1 or shape[1:] == (1, 1), f"values must be [nnz] or [nnz, 1, 1], got {shape}")
    check(values.is_contiguous(), "values must be contiguous")
    check(values.dtype in ACT_DTYPES, f"values must be fp32/fp16/bf16, got {values.dtype}")
    check(nnz < 2**31, "synapse ids must fit int32 (nnz < 2**31)")
    check_index("crow", crow, n_rows + 1)
    check_index("col", col, nnz)
    return nnz


def _mask_u8(synapse_mask: torch.Tensor | None, nnz: int) -> torch.Tensor | None:
    if synapse_mask is None:
        return None
    check(synapse_mask.numel() == nnz, f"synapse_mask must have {nnz} entries, got {synapse_mask.numel()}")
    return synapse_mask.reshape(-1).contiguous().view(torch.uint8)


def _bm(M: int) -> int:
    return BM_INTERPRET if INTERPRET else min(BM_DEFAULT, max(16, triton.next_power_of_2(M)))


@triton.jit
def _effective_weight(
    values,
    synapse_mask,
    sign,
    o_k,
    m_k,
    i_c,
    seed,
    sigma,
    MULTIPLICATIVE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_SIGN: tl.constexpr,
    HAS_NOISE: tl.constexpr,
):
    """``noisy(W) * M * sign[col]`` of synapses ``o_k`` in fp32 (0 where ``m_k`` is false)."""
    b_w = tl.load(values + o_k, mask=m_k, other=0.0).to(tl.float32)
    if HAS_NOISE:
        xi = tl.randn(seed, o_k)
        b_w = b_w * (1.0 + sigma * xi) if MULTIPLICATIVE else b_w + sigma * xi
    if HAS_MASK:
        b_w = tl.where(tl.load(synapse_mask + o_k, mask=m_k, other=0) != 0, b_w, 0.0)
    if HAS_SIGN:
        b_w = b_w * tl.load(sign + i_c, mask=m_k, other=0.0).to(tl.float32)
    return tl.where(m_k, b_w, 0.0)


@triton.heuristics(
    {
        "HAS_MASK": lambda a: a["synapse_mask"] is not None,
        "HAS_SIGN": lambda a: a["sign"] is not None,
        "HAS_NOISE": lambda a: a["sigma"] != 0.0,
        "HAS_STATS": lambda a: a["moments"] is not None,
        "HAS_POST_BIAS": lambda a: a["post_bias"] is not None,
    }
)
@triton.jit
def _csr_linear_fwd_kernel(
    x,
    values,
    crow,
    col,
    row_order,
    synapse_mask,
    sign,
    y,
    post_bias,
    moments,
    M,
    N,
    stride_xm,
    stride_xk,
    stride_ym,
    stride_yn,
    seed,
    sigma,
    inv_batch,
    BM: tl.constexpr,
    BK: tl.constexpr,
    MULTIPLICATIVE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_SIGN: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    HAS_STATS: tl.constexpr,
    HAS_POST_BIAS: tl.constexpr,
):
    """One program: output neuron ``i_n`` x batch tile ``i_m``; ``y[:, i_n] = x[:, col] @ W_eff[i_n, col]``."""
    i_n = tl.load(row_order + tl.program_id(0))
    o_m = (tl.program_id(1) * BM + tl.arange(0, BM)).to(tl.int64)
    m_m = o_m < M
    end = tl.load(crow + i_n + 1)
    acc = tl.zeros([BM], dtype=tl.float32)
    for k0 in range(tl.load(crow + i_n), end, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < end
        i_c = tl.load(col + o_k, mask=m_k, other=0)
        b_w = _effective_weight(
            values, synapse_mask, sign, o_k, m_k, i_c, seed, sigma, MULTIPLICATIVE, HAS_MASK, HAS_SIGN, HAS_NOISE
        )
        p_x = x + o_m[:, None] * stride_xm + i_c.to(tl.int64)[None, :] * stride_xk
        b_x = tl.load(p_x, mask=m_m[:, None] & m_k[None, :], other=0.0).to(tl.float32)  # [BM, BK]
        acc += tl.sum(b_x * b_w[None, :], 1)
    if HAS_STATS:
        # homeostasis tracks mean |post|, Oja's decay mean post^2, of post = y + bias (fp32, before the store)
        b_post = acc
        if HAS_POST_BIAS:
            b_post = acc + tl.load(post_bias + i_n).to(tl.float32)
        b_post = tl.where(m_m, b_post, 0.0)
        tl.atomic_add(moments + i_n, tl.sum(tl.abs(b_post), 0) * inv_batch)
        tl.atomic_add(moments + N + i_n, tl.sum(b_post * b_post, 0) * inv_batch)
    tl.store(y + o_m * stride_ym + i_n * stride_yn, acc.to(y.dtype.element_ty), mask=m_m)


@triton.heuristics(
    {
        "HAS_MASK": lambda a: a["synapse_mask"] is not None,
        "HAS_SIGN": lambda a: a["sign"] is not None,
        "HAS_NOISE": lambda a: a["sigma"] != 0.0,
    }
)
@triton.jit
def _csr_linear_bwd_dx_kernel(
    dy,
    values,
    crow,
    col,
    row_order,
    synapse_mask,
    sign,
    dx,
    M,
    stride_dym,
    stride_dyn,
    stride_dxm,
    stride_dxk,
    seed,
    sigma,
    BM: tl.constexpr,
    BK: tl.constexpr,
    MULTIPLICATIVE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_SIGN: tl.constexpr,
    HAS_NOISE: tl.constexpr,
):
    """One program: output neuron ``i_n`` x batch tile; ``dx[:, col] += dy[:, i_n] W_eff[i_n, col]`` (fp32 atomics)."""
    i_n = tl.load(row_order + tl.program_id(0))
    o_m = (tl.program_id(1) * BM + tl.arange(0, BM)).to(tl.int64)
    m_m = o_m < M
    b_dy = tl.load(dy + o_m * stride_dym + i_n * stride_dyn, mask=m_m, other=0.0).to(tl.float32)  # [BM]
    end = tl.load(crow + i_n + 1)
    for k0 in range(tl.load(crow + i_n), end, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < end
        i_c = tl.load(col + o_k, mask=m_k, other=0)  # distinct within a row: no two lanes add to one address
        b_w = _effective_weight(
            values, synapse_mask, sign, o_k, m_k, i_c, seed, sigma, MULTIPLICATIVE, HAS_MASK, HAS_SIGN, HAS_NOISE
        )
        p_dx = dx + o_m[:, None] * stride_dxm + i_c.to(tl.int64)[None, :] * stride_dxk
        tl.atomic_add(p_dx, b_dy[:, None] * b_w[None, :], mask=m_m[:, None] & m_k[None, :])


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
def _csr_linear_bwd_dw_kernel(
    dy,
    x,
    post,
    post_bias,
    crow,
    col,
    row_order,
    synapse_mask,
    sign,
    dw,
    corr,
    M,
    stride_dym,
    stride_dyn,
    stride_xm,
    stride_xk,
    stride_pm,
    stride_pn,
    seed,
    sigma,
    inv_batch,
    BM: tl.constexpr,
    BK: tl.constexpr,
    MULTIPLICATIVE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_SIGN: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    HAS_GRAD: tl.constexpr,
    HAS_CORR: tl.constexpr,
    HAS_POST_BIAS: tl.constexpr,
):
    """One program: output neuron ``i_n``, its synapses ``BK`` at a time, the whole batch each:
    ``dW[k] = sum_b dy[b, i_n] x[b, col[k]] sign[col[k]] (1 + sigma xi[k]) M[k]`` and
    ``C[k] = sum_b post[b, i_n] x[b, col[k]] / B``."""
    i_n = tl.load(row_order + tl.program_id(0))
    end = tl.load(crow + i_n + 1)
    bias = 0.0
    if HAS_POST_BIAS:
        bias = tl.load(post_bias + i_n).to(tl.float32)
    for k0 in range(tl.load(crow + i_n), end, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < end
        i_c = tl.load(col + o_k, mask=m_k, other=0)
        acc_g = tl.zeros([BK], dtype=tl.float32)
        acc_c = tl.zeros([BK], dtype=tl.float32)
        for m0 in range(0, M, BM):
            o_m = (m0 + tl.arange(0, BM)).to(tl.int64)
            m_m = o_m < M
            p_x = x + o_m[:, None] * stride_xm + i_c.to(tl.int64)[None, :] * stride_xk
            b_x = tl.load(p_x, mask=m_m[:, None] & m_k[None, :], other=0.0).to(tl.float32)  # [BM, BK]
            if HAS_GRAD:
                b_dy = tl.load(dy + o_m * stride_dym + i_n * stride_dyn, mask=m_m, other=0.0).to(tl.float32)
                acc_g += tl.sum(b_dy[:, None] * b_x, 0)
            if HAS_CORR:
                b_p = tl.load(post + o_m * stride_pm + i_n * stride_pn, mask=m_m, other=0.0).to(tl.float32)
                acc_c += tl.sum(tl.where(m_m, b_p + bias, 0.0)[:, None] * b_x, 0)
        keep = m_k
        if HAS_MASK:
            keep = keep & (tl.load(synapse_mask + o_k, mask=m_k, other=0) != 0)
        if HAS_GRAD:
            if HAS_SIGN:
                acc_g = acc_g * tl.load(sign + i_c, mask=m_k, other=0.0).to(tl.float32)
            if HAS_NOISE:  # d noisy(W) / dW = 1 + sigma xi
                acc_g = acc_g * (1.0 + sigma * tl.randn(seed, o_k))
            tl.store(dw + o_k, tl.where(keep, acc_g, 0.0).to(dw.dtype.element_ty), mask=m_k)
        if HAS_CORR:
            tl.store(corr + o_k, tl.where(keep, acc_c * inv_batch, 0.0), mask=m_k)


@triton.heuristics(
    {
        "HAS_MASK": lambda a: a["synapse_mask"] is not None,
        "HAS_SCALE": lambda a: a["scale"] is not None,
    }
)
@triton.jit
def _csr_plasticity_kernel(
    values,
    corr,
    crow,
    synapse_mask,
    post_sq,
    scale,
    eta,
    oja,
    BK: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):
    """One program per postsynaptic neuron: ``W' = (W + eta (C - oja q W)) s``, an entry whose
    sign would flip set to zero, then ``M``."""
    i_n = tl.program_id(0)
    q = tl.load(post_sq + i_n)
    s = 1.0
    if HAS_SCALE:
        s = tl.load(scale + i_n)
    end = tl.load(crow + i_n + 1)
    for k0 in range(tl.load(crow + i_n), end, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < end
        b_w = tl.load(values + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_c = tl.load(corr + o_k, mask=m_k, other=0.0)
        new = (b_w + eta * (b_c - oja * q * b_w)) * s
        new = tl.where(new * b_w < 0, 0.0, new)
        if HAS_MASK:
            new = tl.where(tl.load(synapse_mask + o_k, mask=m_k, other=0) != 0, new, 0.0)
        tl.store(values + o_k, new.to(values.dtype.element_ty), mask=m_k)


# ---------------------------------------------------------------------------------------------
# Launchers (shapes, strides and dtypes checked here; the backend contract calls these).


def csr_linear_fwd(
    *,
    x: torch.Tensor,
    values: torch.Tensor,
    crow: torch.Tensor,
    col: torch.Tensor,
    synapse_mask: torch.Tensor | None,
    sign: torch.Tensor | None,
    n_out: int,
    sigma: float = 0.0,
    seed: int = 0,
    multiplicative: bool = True,
    post_bias: torch.Tensor | None = None,
    post_moments: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y[..., n_out] = x @ W_eff^T`` (no bias).

    Args:
        x: ``[..., n_in]`` fp32/fp16/bf16. values: ``nnz`` weights (``[nnz]`` or ``[nnz, 1, 1]``).
        crow: int32 ``[n_out + 1]``; col: int32 ``[nnz]``; synapse_mask: ``nnz`` bools or ``None``.
        post_moments: optional fp32 ``[2, n_out]`` that receives ``mean_B |y + post_bias|`` and
            ``mean_B (y + post_bias)^2``.
    """
    nnz = _check_csr(values, crow, col, n_out)
    x2d = flat2d(x, "x")
    M = x2d.shape[0]
    check(sign is None or sign.shape == (x2d.shape[1],), f"sign must have shape ({x2d.shape[1]},)")
    check_post_stats(post_bias, post_moments, n_out)
    y = empty((M, n_out), x.dtype, x.device)
    if M == 0 or n_out == 0:
        return y.reshape(*x.shape[:-1], n_out)
    bm = _bm(M)
    _csr_linear_fwd_kernel[(n_out, triton.cdiv(M, bm))](
        x=x2d,
        values=values,
        crow=crow,
        col=col,
        row_order=longest_first(crow),
        synapse_mask=_mask_u8(synapse_mask, nnz),
        sign=sign,
        y=y,
        post_bias=post_bias,
        moments=post_moments,
        M=M,
        N=n_out,
        stride_xm=x2d.stride(0),
        stride_xk=x2d.stride(1),
        stride_ym=y.stride(0),
        stride_yn=y.stride(1),
        seed=seed,
        sigma=float(sigma),
        inv_batch=1.0 / M,
        BM=bm,
        BK=BK_DEFAULT,
        MULTIPLICATIVE=multiplicative,
    )
    return y.reshape(*x.shape[:-1], n_out)


def csr_linear_dx(
    *,
    dy: torch.Tensor,
    values: torch.Tensor,
    crow: torch.Tensor,
    col: torch.Tensor,
    synapse_mask: torch.Tensor | None,
    sign: torch.Tensor | None,
    n_in: int,
    sigma: float = 0.0,
    seed: int = 0,
    multiplicative: bool = True,
) -> torch.Tensor:
    """``dx[..., n_in] = dy @ W_eff``: a scatter over the forward CSR (``dy`` may have any strides,
    a stride-0 expanded one included)."""
    dy2d = flat2d(dy, "dy")
    M, n_out = dy2d.shape
    nnz = _check_csr(values, crow, col, n_out)
    check(sign is None or sign.shape == (n_in,), f"sign must have shape ({n_in},)")
    acc = torch.zeros((M, n_in), dtype=torch.float32, device=dy.device)
    if M and n_out and nnz:
        bm = _bm(M)
        _csr_linear_bwd_dx_kernel[(n_out, triton.cdiv(M, bm))](
            dy=dy2d,
            values=values,
            crow=crow,
            col=col,
            row_order=longest_first(crow),
            synapse_mask=_mask_u8(synapse_mask, nnz),
            sign=sign,
            dx=acc,
            M=M,
            stride_dym=dy2d.stride(0),
            stride_dyn=dy2d.stride(1),
            stride_dxm=acc.stride(0),
            stride_dxk=acc.stride(1),
            seed=seed,
            sigma=float(sigma),
            BM=bm,
            BK=BK_DEFAULT,
            MULTIPLICATIVE=multiplicative,
        )
    return acc.to(dy.dtype).reshape(*dy.shape[:-1], n_in)


def csr_linear_dw(
    *,
    dy: torch.Tensor | None,
    x: torch.Tensor,
    crow: torch.Tensor,
    col: torch.Tensor,
    out_dtype: torch.dtype,
    synapse_mask: torch.Tensor | None,
    sign: torch.Tensor | None,
    sigma: float = 0.0,
    seed: int = 0,
    multiplicative: bool = True,
    post: torch.Tensor | None = None,
    post_bias: torch.Tensor | None = None,
    corr: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """The weight gradient ``[nnz, 1, 1]`` in ``out_dtype`` at the synapses (``None`` without
    ``dy``) and, when ``corr`` (fp32, ``nnz`` entries) is given, the Hebbian correlation
    ``(post + post_bias)^T x / B`` written into it from the same loads of ``x``."""
    x2d = flat2d(x, "x")
    M, n_in = x2d.shape
    n_out = crow.numel() - 1
    nnz = col.numel()
    check_index("crow", crow)
    check_index("col", col)
    check(sign is None or sign.shape == (n_in,), f"sign must have shape ({n_in},)")
    check(post_bias is None or post_bias.shape == (n_out,), f"post_bias must have shape ({n_out},)")
    dy2d = None if dy is None else flat2d(dy, "dy")
    post2d = None if post is None else flat2d(post, "post")
    for name, t in (("dy", dy2d), ("post", post2d)):
        got = None if t is None else tuple(t.shape)
        check(t is None or got == (M, n_out), f"{name} must be [{M}, {n_out}], got {got}")
    if corr is not None:
        check(
            corr.numel() == nnz and corr.dtype == torch.float32 and corr.is_contiguous(),
            f"corr must be a contiguous float32 tensor of {nnz} entries",
        )
        check(post2d is not None, "post is needed to compute corr")
    dw = None if dy2d is None else empty((nnz, 1, 1), out_dtype, x.device)
    if nnz == 0 or n_out == 0 or M == 0:
        if corr is not None:
            corr.zero_()
        return None if dw is None else dw.zero_()
    dummy = x2d
    _csr_linear_bwd_dw_kernel[(n_out,)](
        dy=dy2d,
        x=x2d,
        post=post2d,
        post_bias=post_bias,
        crow=crow,
        col=col,
        row_order=longest_first(crow),
        synapse_mask=_mask_u8(synapse_mask, nnz),
        sign=sign,
        dw=dw,
        corr=corr,
        M=M,
        stride_dym=(dy2d if dy2d is not None else dummy).stride(0),
        stride_dyn=(dy2d if dy2d is not None else dummy).stride(1),
        stride_xm=x2d.stride(0),
        stride_xk=x2d.stride(1),
        stride_pm=(post2d if post2d is not None else dummy).stride(0),
        stride_pn=(post2d if post2d is not None else dummy).stride(1),
        seed=seed,
        sigma=float(sigma),
        inv_batch=1.0 / M,
        BM=_bm(M),
        BK=BK_DEFAULT,
        MULTIPLICATIVE=multiplicative,
    )
    return dw


def csr_plasticity_(
    *,
    values: torch.Tensor,
    corr: torch.Tensor,
    crow: torch.Tensor,
    synapse_mask: torch.Tensor | None,
    post_sq: torch.Tensor,
    scale: torch.Tensor | None,
    eta: float,
    oja: float,
) -> None:
    """The plasticity update of :func:`bionic_sparse.plasticity.plasticity_rule` on ``values``
    (``nnz`` entries) in place, from the fp32 correlation ``corr``; ``post_sq`` and ``scale`` are
    ``[n_out]`` (``scale`` may be ``None``)."""
    n_out = crow.numel() - 1
    nnz = values.numel()
    check_index("crow", crow, n_out + 1)
    check(values.is_contiguous() and values.dtype in ACT_DTYPES, "values must be contiguous fp32/fp16/bf16")
    check(
        corr.numel() == nnz and corr.is_contiguous() and corr.dtype == torch.float32,
        f"corr must be contiguous fp32 with {nnz} entries",
    )
    check(
        post_sq.shape == (n_out,) and (scale is None or scale.shape == (n_out,)),
        f"post_sq and scale must be [{n_out}]",
    )
    if nnz == 0 or n_out == 0:
        return
    _csr_plasticity_kernel[(n_out,)](
        values=values,
        corr=corr,
        crow=crow,
        synapse_mask=_mask_u8(synapse_mask, nnz),
        post_sq=post_sq.float().contiguous(),
        scale=None if scale is None else scale.float().contiguous(),
        eta=float(eta),
        oja=float(oja),
        BK=BK_DEFAULT,
    )
