"""The PyTorch backend (the CPU path; any device works): the contract of
:mod:`bionic_sparse.backends` in plain tensor ops.

Conventions (shared with the Triton kernels):

* ``values[nnzb, b, b]``: block ``k`` covers output rows ``row[k] * b + [0, b)`` and input
  columns ``col[k] * b + [0, b)``.
* Effective weight ``W_eff = noisy(values) * synapse_mask * sign[None, :]`` where
  ``noisy(W) = W * (1 + sigma * xi)`` (multiplicative) or ``W + sigma * xi`` (additive) and
  ``xi`` is :func:`bionic_sparse.noise.synapse_noise` of ``seed``.
* ``y = x @ W_eff^T``; ``dx = dy @ W_eff``;
  ``dvalues = (dy^T (x * sign)) * synapse_mask * d noisy / dW`` on the stored blocks only.

Two methods (:func:`cpu_method`): ``blockT`` keeps activations feature-major ``[blocks, b, batch]``,
gathers the blocks each stored block needs, runs one ``bmm`` and scatters with ``index_add_``;
``dense`` scatters ``W_eff`` into a dense matrix. The forward and the input gradient are the same
block product (:func:`_block_product`) over the block-row and the transposed index; the
weight-gradient pass gathers ``x`` once for the gradient and the Hebbian correlation (one ``bmm``
over ``[dy | post]``).
"""

from __future__ import annotations

import os
import threading

import torch

from .. import plasticity
from ..noise import synapse_noise
from . import ENV_BACKEND

__all__ = [
    "cpu_method",
    "bsr_linear_fwd",
    "bsr_linear_dx",
    "bsr_linear_dw",
    "bsr_plasticity_",
    "BLOCKT_MIN_BLOCK",
    "BLOCKT_MAX_DENSITY_SMALL",
]

# NOTE: thresholds from the training-step measurements in kernels.md section 6 (fp32, n = 4096,
# 2-core AMD EPYC): gather -> bmm -> index_add ("blockT") beats dense masked matmul at every
# sparsity for b >= 32 (17.5 ms vs 90.6 ms at 90 % with b = 64), and for b = 16 from about 90 %
# block sparsity (31.8 ms vs 88.5 ms at 95 %; 65.5 vs 90.6 at 90 %); below that, and for tiny
# blocks whose per-block bmm overhead dominates, the dense masked product wins.
# ``benchmarks/test_bench_bsr_linear.py::test_cpu_dispatch`` re-measures the crossover.
BLOCKT_MIN_BLOCK = 32  # b >= this: always blockT
BLOCKT_MAX_DENSITY_SMALL = 0.15  # 8 <= b < BLOCKT_MIN_BLOCK: blockT only at block density <= this
BLOCKT_MIN_BLOCK_SMALL = 8


def cpu_method(block_size: int, nnzb: int, n_block_rows: int, n_block_cols: int) -> str:
    """``"blockT"`` (gather-bmm-index_add) or ``"dense"`` (dense masked matmul) for one call.

    ``BIONIC_SPARSE_BACKEND=blockT|dense`` forces one (for tests and benchmarks).
    """
    forced = os.environ.get(ENV_BACKEND, "")
    if forced in ("blockT", "dense"):
        return forced
    if block_size >= BLOCKT_MIN_BLOCK:
        return "blockT"
    density = nnzb / max(n_block_rows * n_block_cols, 1)
    if block_size >= BLOCKT_MIN_BLOCK_SMALL and density <= BLOCKT_MAX_DENSITY_SMALL:
        return "blockT"
    return "dense"


_workspaces = threading.local()


def _workspace(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reusable scratch buffer (never returned to the caller).

    NOTE: fresh 64 MB allocations cost ~15 ms on the 2-core CI machine (page faults on mmap'd
    memory, kernels.md section 6), as much as the whole b=64 bmm at 90 % sparsity.
    """
    cache = getattr(_workspaces, "cache", None)
    if cache is None:
        cache = _workspaces.cache = {}
    key = (name, dtype, device)
    numel = 1
    for s in shape:
        numel *= s
    buf = cache.get(key)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=dtype, device=device)
        cache[key] = buf
    return buf[:numel].view(shape)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _noise(nnzb: int, b: int, sigma: float, seed: int, like: torch.Tensor) -> torch.Tensor | None:
    """``sigma * xi`` ``[nnzb, b, b]`` in ``like``'s dtype and device, or ``None`` when ``sigma == 0``."""
    if sigma == 0.0:
        return None
    return synapse_noise(seed, nnzb, b, device=like.device).to(like.dtype) * sigma


def _effective(
    values: torch.Tensor, synapse_mask: torch.Tensor | None, sigma: float, seed: int, multiplicative: bool
) -> torch.Tensor:
    """``noisy(values) * synapse_mask`` ``[nnzb, b, b]`` (the sign is applied to activations)."""
    noise = _noise(values.shape[0], values.shape[-1], sigma, seed, values)
    if noise is None:
        return values if synapse_mask is None else values * synapse_mask
    w = torch.addcmul(values, values, noise) if multiplicative else values + noise  # W (1 + sigma xi) or W + sigma xi
    return w if synapse_mask is None else w.mul_(synapse_mask)


def _segment_ids(ptr: torch.Tensor, n_entries: int) -> torch.Tensor:
    """Compressed pointers ``[S + 1]`` -> the segment of each entry ``[n_entries]`` (e.g. the block
    row of each block from ``crow``)."""
    counts = (ptr[1:] - ptr[:-1]).long()
    return torch.repeat_interleave(torch.arange(counts.numel(), device=ptr.device), counts, output_size=n_entries)


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _feature_major(x2d: torch.Tensor, n_blocks: int, b: int, name: str) -> torch.Tensor:
    """``[B, n]`` -> zero-padded ``[n_blocks, b, B]`` (contiguous, in a workspace)."""
    batch, n = x2d.shape
    out = _workspace(name, (n_blocks * b, batch), x2d.dtype, x2d.device)
    out[:n].copy_(x2d.t())
    if n < n_blocks * b:
        out[n:].zero_()
    return out.view(n_blocks, b, batch)


def _dense_from_blocks(w: torch.Tensor, row: torch.Tensor, col: torch.Tensor, R: int, C: int) -> torch.Tensor:
    """``[nnzb, b, b]`` -> padded dense ``[R * b, C * b]``."""
    b = w.shape[-1]
    dense = w.new_zeros(R, C, b, b)
    dense[row.long(), col.long()] = w
    return dense.permute(0, 2, 1, 3).reshape(R * b, C * b)


def _blocks_from_dense(dense: torch.Tensor, row: torch.Tensor, col: torch.Tensor, b: int) -> torch.Tensor:
    """Padded dense ``[R * b, C * b]`` -> ``[nnzb, b, b]`` at the stored blocks."""
    R, C = dense.shape[0] // b, dense.shape[1] // b
    return dense.view(R, b, C, b).permute(0, 2, 1, 3)[row.long(), col.long()]


def _pad_cols(x2d: torch.Tensor, n: int) -> torch.Tensor:
    return x2d if x2d.shape[1] == n else torch.nn.functional.pad(x2d, (0, n - x2d.shape[1]))


def _per_row(v: torch.Tensor, row: torch.Tensor, b: int) -> torch.Tensor:
    """``[n_out]`` -> ``[nnzb, b, 1]``: each stored block's slice of a per-output vector."""
    R = _cdiv(v.shape[0], b)
    return torch.nn.functional.pad(v, (0, R * b - v.shape[0])).view(R, b)[row.long()].unsqueeze(-1)


def _block_product(
    w: torch.Tensor, a2d: torch.Tensor, gather: torch.Tensor, scatter: torch.Tensor, n_in: int, n_out: int
) -> torch.Tensor:
    """``out[B, n_out]``: for every block ``k``, ``out[:, scatter[k]] += a[:, gather[k]] @ w[k]^T``.

    ``blockT``: activations feature-major, one gather, one ``bmm``, one ``index_add_``; ``dense``:
    the blocks scattered into a dense matrix and one matmul.
    """
    nnzb, b, _ = w.shape
    R, C = _cdiv(n_out, b), _cdiv(n_in, b)
    batch = a2d.shape[0]
    if cpu_method(b, nnzb, R, C) == "blockT":
        a_fm = _feature_major(a2d, C, b, "a_fm")
        gathered = torch.index_select(a_fm, 0, gather, out=_workspace("gather", (nnzb, b, batch), w.dtype, w.device))
        prod = torch.bmm(w, gathered, out=_workspace("prod", (nnzb, b, batch), w.dtype, w.device))
        out_fm = a2d.new_zeros(R, b, batch).index_add_(0, scatter, prod)
        return out_fm.view(R * b, batch)[:n_out].t()
    return _pad_cols(a2d, C * b) @ _dense_from_blocks(w, scatter, gather, R, C)[:n_out].t()


def bsr_linear_fwd(
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
    """``y[..., n_out] = x @ W_eff^T`` (DSD over the block rows); see the contract."""
    x2d = _flatten(x)
    if sign is not None:
        x2d = x2d * sign.to(x2d.dtype)
    w = _effective(values, synapse_mask, sigma, seed, multiplicative).to(x2d.dtype)
    row = _segment_ids(crow, w.shape[0])
    y = _block_product(w, x2d, col, row, x.shape[-1], n_out).contiguous()
    if post_moments is not None:
        post_moments.copy_(plasticity.post_moments(y if post_bias is None else y + post_bias.to(y.dtype)))
    return y.view(*x.shape[:-1], n_out)


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
    sigma: float = 0.0,
    seed: int = 0,
    multiplicative: bool = True,
) -> torch.Tensor:
    """``dx[..., n_in] = (dy @ W_eff) * sign`` from the transposed index: entry ``j`` is block
    ``perm_t[j]`` at block row ``row_t[j]`` of block column ``j``'s segment of ``ccol_t``."""
    dy2d = _flatten(dy)
    w = _effective(values, synapse_mask, sigma, seed, multiplicative).to(dy2d.dtype)
    # NOTE: the blocks stay in their stored order: scattering the (nnzb) block coordinates back
    # through perm_t is free, gathering the (nnzb * b * b) weights into transposed order is not
    nnzb = w.shape[0]
    row, col = torch.empty_like(perm_t), torch.empty_like(perm_t)
    row[perm_t.long()] = row_t
    col[perm_t.long()] = _segment_ids(ccol_t, nnzb).to(col.dtype)
    dx = _block_product(w.transpose(1, 2), dy2d, row, col, dy.shape[-1], n_in)
    if sign is not None:
        dx = dx * sign.to(dx.dtype)
    return dx.contiguous().view(*dy.shape[:-1], n_in)


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
) -> torch.Tensor | None:
    """Weight gradient and Hebbian correlation from one gather of ``x`` (SDD); see the contract."""
    b, nnzb = block_size, row.numel()
    x2d = _flatten(x)
    batch = x2d.shape[0]
    # one bmm computes [dy | post]^T x for every block: rows [0, b) the gradient (with the sign
    # on x), rows [b, 2b) the correlation (raw x; exact as the sign is one per input column)
    outs = []
    if dy is not None:
        outs.append(("grad", _flatten(dy)))
    if corr is not None:
        post2d = _flatten(post).to(x2d.dtype)
        outs.append(("corr", post2d if post_bias is None else post2d + post_bias.to(x2d.dtype)))
    if not outs:
        return None
    n_out = outs[0][1].shape[1]
    R, C = _cdiv(n_out, b), _cdiv(x2d.shape[1], b)
    if cpu_method(b, nnzb, R, C) == "blockT":
        x_fm = _feature_major(x2d, C, b, "x_fm")
        x_g = torch.index_select(x_fm, 0, col, out=_workspace("x_g", (nnzb, b, batch), x_fm.dtype, x_fm.device))
        lhs = _workspace("lhs", (nnzb, len(outs) * b, batch), x_fm.dtype, x_fm.device)
        for i, (_, a2d) in enumerate(outs):
            a_fm = _feature_major(a2d.to(x2d.dtype), R, b, "a_fm")
            torch.index_select(a_fm, 0, row, out=lhs[:, i * b : (i + 1) * b])
        prod = torch.bmm(lhs, x_g.transpose(1, 2))  # [nnzb, (1|2) b, b]
        parts = {name: prod[:, i * b : (i + 1) * b] for i, (name, _) in enumerate(outs)}
    else:
        xp = _pad_cols(x2d, C * b)
        parts = {name: _blocks_from_dense(_pad_cols(a2d, R * b).t() @ xp, row, col, b) for name, a2d in outs}
    if corr is not None:
        torch.div(parts["corr"], max(batch, 1), out=corr)
    if dy is None:
        return None
    dw = parts["grad"].contiguous().to(out_dtype)  # a fresh tensor (never a workspace): scaled in place
    if sign is not None:
        dw.mul_(_per_col(sign.to(dw.dtype), col, b))
    noise = _noise(nnzb, b, sigma, seed, dw)
    if noise is not None and multiplicative:
        dw.addcmul_(dw, noise)  # dW * (1 + sigma xi)
    if synapse_mask is not None:
        dw.mul_(synapse_mask)
    return dw


def _per_col(v: torch.Tensor, col: torch.Tensor, b: int) -> torch.Tensor:
    """``[n_in]`` -> ``[nnzb, 1, b]``: each stored block's slice of a per-input vector."""
    C = _cdiv(v.shape[0], b)
    return torch.nn.functional.pad(v, (0, C * b - v.shape[0])).view(C, b)[col.long()].unsqueeze(1)


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
    """``values <- plasticity_rule(values, corr, ...) * synapse_mask`` on the stored blocks."""
    b = values.shape[-1]
    new = plasticity.plasticity_rule(
        values,
        corr,
        _per_row(post_sq, row, b),
        None if scale is None else _per_row(scale, row, b),
        eta,
        oja,
    )
    if synapse_mask is not None:
        new = new * synapse_mask
    values.copy_(new)
