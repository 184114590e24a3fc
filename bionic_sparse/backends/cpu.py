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

Three methods (:func:`cpu_method`):

* ``csr`` (a synapse mask whose synapses fill few of the stored slots, as in BioNIC's laminar
  layers): the synapses alone, in element-level CSR order. The forward and the input gradient
  are MKL sparse x dense products (over the CSR and its transpose), the weight gradient and the
  Hebbian correlation are sampled products at the synapses (``torch.sparse.sampled_addmm``), and
  noise is drawn at the synapses only.
* ``blockT`` keeps activations feature-major ``[blocks, b, batch]``, gathers the blocks each
  stored block needs, runs one ``bmm`` and scatters with ``index_add_``; the weight-gradient pass
  gathers ``x`` once for the gradient and the correlation (one ``bmm`` over ``[dy | post]``).
* ``dense`` runs dense matmuls on ``W_eff`` scattered into a dense matrix (from the synapses
  alone when there is a synapse mask).

Where the synapses are (:class:`_Synapses`) is computed once per synapse mask and cached.
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref
from collections.abc import Callable

import torch

from .. import plasticity
from ..noise import synapse_noise, synapse_noise_at
from . import ENV_BACKEND, element

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
# NOTE: element-level CSR (fwd + dx + dW, 1536 x 1536, fp32, one thread of the 2-core CI machine)
# against three dense matmuls: 3.9 vs 12.4 ms at 5 % synapse density, 9.9 vs 11.9 at 20 %,
# 14.6 vs 11.5 at 30 % (batch 64; the same crossover at batch 256). Against blockT, which does
# the work of every stored slot, CSR wins while the synapses fill under about a third of them.
CSR_MAX_DENSITY = 0.15  # synapses / (n_out * n_in)
CSR_MAX_FILL = 0.35  # synapses / stored slots
CSR_DTYPES = (torch.float32, torch.float64)  # what the CPU sparse kernels compute in


def cpu_method(block_size: int, nnzb: int, n_block_rows: int, n_block_cols: int, n_synapses: int | None = None) -> str:
    """``"csr"`` (synapse-level sparse products), ``"blockT"`` (gather-bmm-index_add) or ``"dense"``
    (dense masked matmul) for one call. ``n_synapses`` is given when a synapse mask marks which
    slots of the stored blocks are synapses (``None``: every slot is).

    ``BIONIC_SPARSE_BACKEND=csr|blockT|dense`` forces one (for tests and benchmarks; ``csr`` needs a
    synapse mask and falls back to ``dense`` without one).
    """
    forced = os.environ.get(ENV_BACKEND, "")
    if forced in ("blockT", "dense"):
        return forced
    if forced == "csr":
        return "csr" if n_synapses is not None else "dense"
    if n_synapses is not None:
        b = block_size
        slots = n_block_rows * b * n_block_cols * b
        if n_synapses <= CSR_MAX_DENSITY * slots and n_synapses <= CSR_MAX_FILL * nnzb * b * b:
            return "csr"
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


class _Synapses:
    """Where the synapses of one topology are, cached per synapse mask (see :func:`_synapses`).

    ``slot[nsyn]``: flat index into ``values[nnzb, b, b]`` (= the global synapse id of the noise);
    ``out_row[nsyn]`` / ``in_col[nsyn]``: the synapse's output and input unit. All int64, in CSR
    order (by output unit, then input unit). :meth:`dense`, :meth:`csr` and :meth:`csr_t` give the
    dense index, the CSR row pointers and the transposed CSR of one logical shape.
    """

    def __init__(self, row: torch.Tensor, col: torch.Tensor | None, synapse_mask: torch.Tensor) -> None:
        b = synapse_mask.shape[-1]
        slot = synapse_mask.reshape(-1).nonzero().squeeze(1)
        k, ij = slot // (b * b), slot % (b * b)
        out_row = row.long()[k] * b + ij // b
        in_col = None
        if col is not None:
            in_col = col.long()[k] * b + ij % b
            order = torch.argsort(out_row * 2**32 + in_col)
            slot, out_row, in_col = slot[order], out_row[order], in_col[order]
        self.slot, self.out_row, self.in_col = slot, out_row, in_col
        self._by_shape: dict[tuple, object] = {}

    @property
    def n(self) -> int:
        return self.slot.numel()

    def inside(self, n_out: int, n_in: int | None = None) -> bool:
        """True when every synapse lies inside ``[n_out, n_in]`` (not so only for a hand-made mask
        with synapses in the padding, which the block path handles)."""
        if self.n == 0:
            return True
        top_row, top_col = self._memo(
            ("max",), lambda: (int(self.out_row.max()), None if self.in_col is None else int(self.in_col.max()))
        )
        return top_row < n_out and (n_in is None or top_col < n_in)

    def _memo(self, key: tuple, make: Callable[[], object]):
        if key not in self._by_shape:
            self._by_shape[key] = make()
        return self._by_shape[key]

    def dense(self, n_out: int, n_in: int) -> torch.Tensor:
        """Flat index into a dense ``[n_out, n_in]`` weight."""
        return self._memo(("dense", n_out, n_in), lambda: self.out_row * n_in + self.in_col)

    def csr(self, n_out: int) -> torch.Tensor:
        """Row pointers ``[n_out + 1]`` of the synapses as a CSR ``[n_out, n_in]`` matrix."""
        return self._memo(("csr", n_out), lambda: _pointers(self.out_row, n_out))

    def csr_t(self, n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The transposed CSR ``[n_in, n_out]``: ``(order, pointers[n_in + 1], out_row[order])``,
        where ``order`` takes CSR-ordered values into transposed order."""

        def make():
            order = torch.argsort(self.in_col * 2**32 + self.out_row)
            return order, _pointers(self.in_col[order], n_in), self.out_row[order]

        return self._memo(("csr_t", n_in), make)

    def pattern(self, n_out: int, n_in: int, dtype: torch.dtype) -> torch.Tensor:
        """The synapses as a CSR tensor with zero values (the sampling pattern of the weight gradient)."""

        def make():
            values = torch.zeros(self.n, dtype=dtype, device=self.slot.device)
            return _csr(self.csr(n_out), self.in_col, values, n_out, n_in)

        return self._memo(("pattern", n_out, n_in, dtype), make)


def _pointers(sorted_ids: torch.Tensor, n: int) -> torch.Tensor:
    """Compressed pointers ``[n + 1]`` of sorted segment ids."""
    counts = torch.bincount(sorted_ids, minlength=n)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, n_rows: int, n_cols: int) -> torch.Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state": not the user's concern
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, (n_rows, n_cols), check_invariants=False)


# NOTE: keyed on the mask tensor itself (a module's buffer) and its version: building the index
# scans and sorts every stored slot (a few ms for 1.3M slots on the 2-core CI machine), three
# times per layer and step without the cache. Weak references: a dropped layer's index goes too.
_SYNAPSE_CACHE_ENTRIES = 32
_synapse_cache: dict[int, tuple[weakref.ref, int, _Synapses]] = {}
_synapse_lock = threading.Lock()


def _synapses(
    synapse_mask: torch.Tensor, row: Callable[[], torch.Tensor], col: Callable[[], torch.Tensor] | None
) -> _Synapses:
    """The cached :class:`_Synapses` of ``synapse_mask`` (``row``/``col`` give the block coordinates
    on a miss; without ``col`` a miss builds an entry without ``in_col`` that is not cached)."""
    key = id(synapse_mask)
    with _synapse_lock:
        hit = _synapse_cache.get(key)
        if hit is not None and hit[0]() is synapse_mask and hit[1] == synapse_mask._version:
            return hit[2]
    if col is None:
        return _Synapses(row(), None, synapse_mask)
    syn = _Synapses(row(), col(), synapse_mask)
    with _synapse_lock:
        _synapse_cache[key] = (weakref.ref(synapse_mask), synapse_mask._version, syn)
        while len(_synapse_cache) > _SYNAPSE_CACHE_ENTRIES:
            _synapse_cache.pop(next(iter(_synapse_cache)))
    return syn


def _synapse_weights(
    values: torch.Tensor, syn: _Synapses, sign: torch.Tensor | None, sigma: float, seed: int, multiplicative: bool
) -> torch.Tensor:
    """``noisy(W) * sign`` at the synapses ``[nsyn]``: noise drawn only where synapses are."""
    w = values.reshape(-1).index_select(0, syn.slot)
    if sigma != 0.0:
        xi = synapse_noise_at(seed, syn.slot).to(w.dtype)
        w = torch.addcmul(w, w, xi, value=sigma) if multiplicative else w.add_(xi, alpha=sigma)
    if sign is not None:
        w = w.mul_(sign.to(w.dtype).index_select(0, syn.in_col))
    return w


def _scatter_dense(w_syn: torch.Tensor, index: torch.Tensor, n_out: int, n_in: int, dtype: torch.dtype) -> torch.Tensor:
    """Dense ``[n_out, n_in]`` with ``w_syn`` at ``index`` and zeros elsewhere."""
    dense = torch.zeros(n_out * n_in, dtype=dtype, device=w_syn.device)
    return dense.index_copy_(0, index, w_syn.to(dtype)).view(n_out, n_in)


def _xi(nnzb: int, b: int, seed: int, like: torch.Tensor) -> torch.Tensor:
    """``xi[nnzb, b, b]`` of every slot in ``like``'s dtype and device (memoised; not to be modified)."""
    return synapse_noise(seed, nnzb, b, device=like.device).to(like.dtype)


def _effective(
    values: torch.Tensor,
    synapse_mask: torch.Tensor | None,
    sigma: float,
    seed: int,
    multiplicative: bool,
    syn: _Synapses | None,
) -> torch.Tensor:
    """``noisy(values) * synapse_mask`` ``[nnzb, b, b]`` (the sign is applied to activations);
    with a synapse mask (and its ``syn``) the noise is drawn at the synapses only."""
    if synapse_mask is None or syn is None:
        if sigma == 0.0:
            return values
        xi = _xi(values.shape[0], values.shape[-1], seed, values)
        return torch.addcmul(values, values, xi, value=sigma) if multiplicative else torch.add(values, xi, alpha=sigma)
    w = values * synapse_mask
    if sigma != 0.0:
        w.view(-1).index_copy_(0, syn.slot, _synapse_weights(values, syn, None, sigma, seed, multiplicative))
    return w


def _segment_ids(ptr: torch.Tensor, n_entries: int) -> torch.Tensor:
    """Compressed pointers ``[S + 1]`` -> the segment of each entry ``[n_entries]`` (e.g. the block
    row of each block from ``crow``)."""
    counts = (ptr[1:] - ptr[:-1]).long()
    return torch.repeat_interleave(torch.arange(counts.numel(), device=ptr.device), counts, output_size=n_entries)


def _shaped(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``t`` in ``shape`` as a tensor of its own, not a view: an op's output that is a view cannot
    be modified in place after the layer (``ReLU(inplace=True)``, ``h += x``). Contiguous
    results are reshaped in place (no copy)."""
    t = t.contiguous()
    if t._base is not None:
        t = t.clone()
    return t.resize_(shape)


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
    w: torch.Tensor, a2d: torch.Tensor, gather: torch.Tensor, scatter: torch.Tensor, n_in: int, n_out: int, method: str
) -> torch.Tensor:
    """``out[B, n_out]``: for every block ``k``, ``out[:, scatter[k]] += a[:, gather[k]] @ w[k]^T``.

    ``blockT``: activations feature-major, one gather, one ``bmm``, one ``index_add_``; ``dense``:
    the blocks scattered into a dense matrix and one matmul.
    """
    nnzb, b, _ = w.shape
    R, C = _cdiv(n_out, b), _cdiv(n_in, b)
    batch = a2d.shape[0]
    if method == "blockT":
        a_fm = _feature_major(a2d, C, b, "a_fm")
        gathered = torch.index_select(a_fm, 0, gather, out=_workspace("gather", (nnzb, b, batch), w.dtype, w.device))
        prod = torch.bmm(w, gathered, out=_workspace("prod", (nnzb, b, batch), w.dtype, w.device))
        out_fm = a2d.new_zeros(R, b, batch).index_add_(0, scatter, prod)
        return out_fm.view(R * b, batch)[:n_out].t()
    return _pad_cols(a2d, C * b) @ _dense_from_blocks(w, scatter, gather, R, C)[:n_out].t()


def _plan(
    b: int,
    nnzb: int,
    n_out: int,
    n_in: int,
    synapse_mask: torch.Tensor | None,
    row: Callable[[], torch.Tensor],
    col: Callable[[], torch.Tensor],
    dtype: torch.dtype,
) -> tuple[str, _Synapses | None, bool]:
    """``(method, synapses, from_synapses)`` of one call: the method, where the synapses are (with a
    synapse mask) and whether the call runs on the synapses alone (``csr``, or ``dense`` with a mask)."""
    R, C = _cdiv(n_out, b), _cdiv(n_in, b)
    if synapse_mask is None:
        return cpu_method(b, nnzb, R, C), None, False
    syn = _synapses(synapse_mask, row, col)
    method = cpu_method(b, nnzb, R, C, syn.n)
    if method == "csr" and (dtype not in CSR_DTYPES or not syn.inside(n_out, n_in)):
        method = "dense" if dtype not in CSR_DTYPES else "blockT"  # synapses in the padding: blocks
    return method, syn, method in ("csr", "dense") and syn.inside(n_out, n_in)


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
    if values.shape[-1] == 1 and synapse_mask is None and not _forced_block_method():
        return _shaped(
            element.linear_fwd(
                x=x,
                values=values,
                crow=crow,
                col=col,
                sign=sign,
                n_out=n_out,
                sigma=sigma,
                seed=seed,
                multiplicative=multiplicative,
                post_bias=post_bias,
                post_moments=post_moments,
            ),
            (*x.shape[:-1], n_out),
        )
    x2d = _flatten(x)
    nnzb, b, n_in = values.shape[0], values.shape[-1], x.shape[-1]
    row = _segment_ids(crow, nnzb)
    method, syn, from_synapses = _plan(b, nnzb, n_out, n_in, synapse_mask, lambda: row, lambda: col, x2d.dtype)
    if from_synapses:  # the sign folded into the weights
        w_syn = _synapse_weights(values, syn, sign, sigma, seed, multiplicative).to(x2d.dtype)
        if method == "csr":
            y = (_csr(syn.csr(n_out), syn.in_col, w_syn, n_out, n_in) @ x2d.t()).t()
        else:
            y = x2d @ _scatter_dense(w_syn, syn.dense(n_out, n_in), n_out, n_in, x2d.dtype).t()
    else:
        if sign is not None:
            x2d = x2d * sign.to(x2d.dtype)
        w = _effective(values, synapse_mask, sigma, seed, multiplicative, syn).to(x2d.dtype)
        y = _block_product(w, x2d, col, row, n_in, n_out, method)
    y = y.contiguous()
    if post_moments is not None:
        post_moments.copy_(plasticity.post_moments(y if post_bias is None else y + post_bias.to(y.dtype)))
    return _shaped(y, (*x.shape[:-1], n_out))


def _forced_block_method() -> bool:
    """``BIONIC_SPARSE_BACKEND=blockT|dense|csr``: run a block size 1 matrix that has the full
    index through that method (tests compare the paths); element storage runs element-level."""
    return os.environ.get(ENV_BACKEND, "") in ("blockT", "dense", "csr")


def bsr_linear_dx(
    *,
    dy: torch.Tensor,
    values: torch.Tensor,
    crow: torch.Tensor,
    col: torch.Tensor,
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
    if element.is_element_storage(values, perm_t) or (
        values.shape[-1] == 1 and synapse_mask is None and not _forced_block_method()
    ):
        dx = element.linear_dx(
            dy=dy,
            values=values,
            crow=crow,
            col=col,
            sign=sign,
            n_in=n_in,
            sigma=sigma,
            seed=seed,
            multiplicative=multiplicative,
        )
        return _shaped(dx, (*dy.shape[:-1], n_in))
    dy2d = _flatten(dy)
    nnzb, b, n_out = values.shape[0], values.shape[-1], dy.shape[-1]

    # NOTE: the blocks stay in their stored order: scattering the (nnzb) block coordinates back
    # through perm_t is free, gathering the (nnzb * b * b) weights into transposed order is not
    def coords() -> tuple[torch.Tensor, torch.Tensor]:
        row, col = torch.empty_like(perm_t), torch.empty_like(perm_t)
        row[perm_t.long()] = row_t
        col[perm_t.long()] = _segment_ids(ccol_t, nnzb).to(col.dtype)
        return row, col

    method, syn, from_synapses = _plan(
        b, nnzb, n_out, n_in, synapse_mask, lambda: coords()[0], lambda: coords()[1], dy2d.dtype
    )
    if from_synapses:
        w_syn = _synapse_weights(values, syn, sign, sigma, seed, multiplicative).to(dy2d.dtype)
        if method == "csr":
            order, ptr, rows = syn.csr_t(n_in)
            dx = _csr(ptr, rows, w_syn[order], n_in, n_out) @ dy2d.t()
            return _shaped(dx.t(), (*dy.shape[:-1], n_in))
        dx = dy2d @ _scatter_dense(w_syn, syn.dense(n_out, n_in), n_out, n_in, dy2d.dtype)
        return _shaped(dx, (*dy.shape[:-1], n_in))
    row, col = coords()
    w = _effective(values, synapse_mask, sigma, seed, multiplicative, syn).to(dy2d.dtype)
    dx = _block_product(w.transpose(1, 2), dy2d, row, col, n_out, n_in, method)
    if sign is not None:
        dx = dx * sign.to(dx.dtype)
    return _shaped(dx, (*dy.shape[:-1], n_in))


def bsr_linear_dw(
    *,
    dy: torch.Tensor | None,
    x: torch.Tensor,
    crow: torch.Tensor,
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
    """Weight gradient and Hebbian correlation from one pass over ``x`` (SDD); see the contract."""
    if block_size == 1 and synapse_mask is None and (row.numel() != col.numel() or not _forced_block_method()):
        return element.linear_dw(
            dy=dy,
            x=x,
            crow=crow,
            col=col,
            out_dtype=out_dtype,
            sign=sign,
            sigma=sigma,
            seed=seed,
            multiplicative=multiplicative,
            post=post,
            post_bias=post_bias,
            corr=corr,
        )
    b, nnzb = block_size, row.numel()
    x2d = _flatten(x)
    batch = x2d.shape[0]
    # [dy | post]^T x for every stored block or synapse: the gradient (its sign applied afterwards,
    # exact as the sign is one per input column) and the correlation; blockT and dense do both in
    # one product, csr in two sampled products (each touches only the synapses)
    outs = []
    if dy is not None:
        outs.append(("grad", _flatten(dy).to(x2d.dtype)))
    if corr is not None:
        post2d = _flatten(post).to(x2d.dtype)
        outs.append(("corr", post2d if post_bias is None else post2d + post_bias.to(x2d.dtype)))
    if not outs:
        return None
    n_out, n_in = outs[0][1].shape[1], x2d.shape[1]
    R, C = _cdiv(n_out, b), _cdiv(n_in, b)
    method, syn, from_synapses = _plan(b, nnzb, n_out, n_in, synapse_mask, lambda: row, lambda: col, x2d.dtype)
    if from_synapses:
        if method == "csr":  # sampled products at the synapses (SDDMM), in CSR order
            pattern = syn.pattern(n_out, n_in, x2d.dtype)
            parts = {name: torch.sparse.sampled_addmm(pattern, a2d.t(), x2d, beta=0.0).values() for name, a2d in outs}
        else:  # one dense product of [dy | post], read at the synapses
            lhs = outs[0][1] if len(outs) == 1 else torch.cat([a2d for _, a2d in outs], 1)
            prod = (lhs.t() @ x2d).view(-1)  # [(1|2) n_out, n_in] flattened
            index = syn.dense(n_out, n_in)
            parts = {name: prod.index_select(0, index + i * n_out * n_in) for i, (name, _) in enumerate(outs)}
        if corr is not None:
            corr.zero_().view(-1).index_copy_(0, syn.slot, parts["corr"].div_(max(batch, 1)).to(corr.dtype))
        if dy is None:
            return None
        g = parts["grad"]
        if sign is not None:
            g = g.mul_(sign.to(g.dtype).index_select(0, syn.in_col))
        if sigma != 0.0 and multiplicative:
            g = g.mul_(synapse_noise_at(seed, syn.slot).to(g.dtype).mul(sigma).add_(1.0))  # dW (1 + sigma xi)
        dw = torch.zeros(nnzb * b * b, dtype=out_dtype, device=x2d.device)
        return dw.index_copy_(0, syn.slot, g.to(out_dtype)).view(nnzb, b, b)
    if method == "blockT":
        x_fm = _feature_major(x2d, C, b, "x_fm")
        x_g = torch.index_select(x_fm, 0, col, out=_workspace("x_g", (nnzb, b, batch), x_fm.dtype, x_fm.device))
        lhs = _workspace("lhs", (nnzb, len(outs) * b, batch), x_fm.dtype, x_fm.device)
        for i, (_, a2d) in enumerate(outs):
            a_fm = _feature_major(a2d, R, b, "a_fm")
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
    if sigma != 0.0 and multiplicative:
        if syn is None:  # no synapse mask: every slot
            dw.addcmul_(dw, _xi(nnzb, b, seed, dw), value=sigma)  # dW * (1 + sigma xi)
        else:  # at the synapses only: the mask zeroes the rest below
            flat = dw.view(-1)
            factor = synapse_noise_at(seed, syn.slot).to(dw.dtype).mul(sigma).add_(1.0)
            flat.index_copy_(0, syn.slot, flat.index_select(0, syn.slot).mul_(factor))
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
    crow: torch.Tensor,
    row: torch.Tensor,
    synapse_mask: torch.Tensor | None,
    post_sq: torch.Tensor,
    scale: torch.Tensor | None,
    eta: float,
    oja: float,
) -> None:
    """``values <- plasticity_rule(values, corr, ...) * synapse_mask`` on the stored blocks; with a
    synapse mask the rule runs on the synapses only (the rest is zero after the mask)."""
    if element.is_element_storage(values, row):
        element.plasticity_(values=values, corr=corr, crow=crow, post_sq=post_sq, scale=scale, eta=eta, oja=oja)
        return
    b = values.shape[-1]
    if synapse_mask is not None and values.is_contiguous():
        s = _synapses(synapse_mask, lambda: row, None)  # the input columns are not needed here
        if s.inside(post_sq.shape[0]):
            flat = values.view(-1)
            new = plasticity.plasticity_rule(
                flat.index_select(0, s.slot),
                corr.reshape(-1).index_select(0, s.slot),
                post_sq.index_select(0, s.out_row),
                None if scale is None else scale.index_select(0, s.out_row),
                eta,
                oja,
            )
            values.mul_(synapse_mask)
            flat.index_copy_(0, s.slot, new)
            return
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
