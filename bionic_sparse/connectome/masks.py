"""From a :class:`Column` to the masks of a feedforward laminar stack (L4 -> L2/3 -> L5 -> L6).

Each inter-laminar mask is the column's adjacency between the neurons of two layers (E and I
together), ``[post units, pre units]`` bool, ready for ``SparseConnectomeLinear(mask=...)``.

* **Population expansion**: each neuron becomes ``units_per_neuron`` units; a neuron-level
  connection becomes a dense ``u x u`` block (``kron(A, ones(u, u))``), so with ``u`` equal to the
  block size every connection is one full block.
* **Neuron order** inside each layer: candidates are the identity order, cell type, and cell type
  then reverse Cuthill-McKee on the layer's co-connectivity graph; the candidate with the fewest
  nonzero blocks over all masks is kept, so reordering never lowers block fill. Orders are
  permutations: the graph is unchanged.
* **Rows with no inputs** are kept: such units receive only their bias (counted in
  ``empty_rows``); LayerNorm after the layer normalises them with the rest.
* **Graded inhibition**: per presynaptic unit ``+1`` (excitatory) or ``-g_inh * m_j`` with
  ``m_j = log1p(outgoing synapses of j) / mean over inhibitory neurons`` (so the mean is ``g_inh``).
* **Controls**: ``control="random"`` moves every nonzero ``b x b`` block of each mask to a random
  free position (same per-block density and block fills per layer pair); ``"rewired"`` shuffles
  the partners of every neuron-level projection while each neuron keeps its in-degree and
  out-degree in it (degree-preserving rewiring, curveball algorithm), which separates "this
  wiring" from "this many connections per neuron"; ``"shuffled_laminae"`` permutes the layer
  labels of the neurons (layer sizes kept) before building the masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import reverse_cuthill_mckee

from ..format import BlockSparseMatrix
from .column import LAYERS, Column

__all__ = ["LaminarStack", "LayerMask", "laminar_masks", "rewire_degree_preserving", "DEFAULT_PATHWAY"]

DEFAULT_PATHWAY = ("L4", "L23", "L5", "L6")
CONTROLS = (None, "random", "rewired", "shuffled_laminae")


@dataclass
class LayerMask:
    """One projection ``pre -> post``: ``mask[post units, pre units]`` and ``sign[pre units]``."""

    pre: str
    post: str
    mask: torch.Tensor
    sign: torch.Tensor
    empty_rows: int
    fill_identity_order: float
    fill: float

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mask.shape)


@dataclass
class LaminarStack:
    pathway: tuple[str, ...]
    units_per_neuron: int
    block_size: int
    sizes: dict[str, int]
    neuron_index: dict[str, np.ndarray]  # column rows of each layer's neurons, in unit order
    layers: list[LayerMask]
    extra: list[LayerMask] = field(default_factory=list)  # skip / recurrent projections
    control: str | None = None

    def report(self) -> str:
        lines = [
            f"pathway {' -> '.join(self.pathway)}, units/neuron {self.units_per_neuron}, block {self.block_size}"
            + (f", control {self.control}" if self.control else "")
        ]
        for lm in self.layers + self.extra:
            bsm = BlockSparseMatrix.from_dense(lm.mask, self.block_size)
            stats = bsm.block_fill()
            lines.append(
                f"  {lm.pre:>3} -> {lm.post:<3} {lm.shape[0]:>6} x {lm.shape[1]:<6} element density "
                f"{stats.element_density:.4f}, block density {stats.block_density:.4f}, "
                f"fill {lm.fill_identity_order:.3f} -> {lm.fill:.3f} (identity -> chosen order), "
                f"rows without input {lm.empty_rows}"
            )
        return "\n".join(lines)


def _block_count(mask: np.ndarray, b: int) -> int:
    n_out, n_in = mask.shape
    R, C = -(-n_out // b), -(-n_in // b)
    padded = np.zeros((R * b, C * b), dtype=bool)
    padded[:n_out, :n_in] = mask
    return int(padded.reshape(R, b, C, b).any(axis=(1, 3)).sum())


def _fill(mask: np.ndarray, b: int) -> float:
    nnzb = _block_count(mask, b)
    return float(mask.sum()) / (nnzb * b * b) if nnzb else 0.0


def _inhibitory_gain(column: Column, g_inh: float) -> np.ndarray:
    out_syn = np.bincount(column.pre, weights=column.n_synapses, minlength=column.n_neurons)
    m = np.log1p(out_syn)
    inh = ~column.excitatory
    mean = m[inh].mean() if inh.any() and m[inh].mean() > 0 else 1.0
    return np.where(column.excitatory, 1.0, -g_inh * m / mean)


def _expand(mask: np.ndarray, u: int) -> np.ndarray:
    return np.kron(mask, np.ones((u, u), dtype=bool)) if u > 1 else mask


def laminar_masks(
    column: Column,
    pathway: tuple[str, ...] = DEFAULT_PATHWAY,
    units_per_neuron: int = 32,
    block_size: int = 32,
    min_synapses: int = 1,
    g_inh: float = 1.0,
    order: str = "auto",
    skip: bool = False,
    recurrent: bool = False,
    control: str | None = None,
    seed: int = 0,
) -> LaminarStack:
    """Masks of the feedforward stack ``pathway[0] -> pathway[1] -> ...``.

    Args:
        units_per_neuron: population expansion factor ``u`` (1 = off).
        block_size: block size used to measure and optimise fill.
        min_synapses: keep a connection only with at least this many synapses.
        g_inh: global inhibitory gain ``g_I``.
        order: ``"auto"`` (best of the candidates, see module docstring) or ``"identity"``.
        skip: also build ``pathway[k] -> pathway[k + 2]`` projections (in ``extra``).
        recurrent: also build within-layer ``pathway[k] -> pathway[k]`` projections (in ``extra``).
        control: ``None``, ``"random"``, ``"rewired"`` or ``"shuffled_laminae"``.
        seed: seed of the controls.
    """
    if control not in CONTROLS:
        raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")
    if order not in ("auto", "identity"):
        raise ValueError(f"order must be 'auto' or 'identity', got {order!r}")
    if units_per_neuron < 1 or block_size < 1 or min_synapses < 1:
        raise ValueError("units_per_neuron, block_size and min_synapses must be >= 1")
    unknown = [lay for lay in pathway if lay not in LAYERS]
    if unknown or len(pathway) < 2 or len(set(pathway)) != len(pathway):
        raise ValueError(f"pathway must list >= 2 distinct layers of {LAYERS}, got {pathway}")
    rng = np.random.default_rng(seed)
    layer = column.layer.copy()
    if control == "shuffled_laminae":
        layer = rng.permutation(layer)
    members = {lay: np.flatnonzero(layer == lay) for lay in pathway}
    empty = [lay for lay, idx in members.items() if idx.size == 0]
    if empty:
        raise ValueError(f"layers {empty} of the pathway have no neurons in this column")
    adj = column.adjacency("count")
    adj = (adj >= min_synapses).astype(bool).tocsr()
    gain = _inhibitory_gain(column, g_inh)

    pairs = [(pathway[k], pathway[k + 1]) for k in range(len(pathway) - 1)]
    extra_pairs = [(pathway[k], pathway[k + 2]) for k in range(len(pathway) - 2)] if skip else []
    extra_pairs += [(lay, lay) for lay in pathway] if recurrent else []

    def sub(pre: str, post: str, orders: dict[str, np.ndarray]) -> np.ndarray:
        return adj[members[post][orders[post]]][:, members[pre][orders[pre]]].toarray()

    identity = {lay: np.arange(members[lay].size) for lay in pathway}
    orders = identity
    if order == "auto":
        candidates = [identity, _type_order(column, members), _rcm_order(column, members, adj, pairs)]
        fills = [
            sum(_block_count(_expand(sub(a, b, o), units_per_neuron), block_size) for a, b in pairs) for o in candidates
        ]
        orders = candidates[int(np.argmin(fills))]

    def build(pre: str, post: str) -> LayerMask:
        neurons = sub(pre, post, orders)
        if control == "rewired":
            neurons = rewire_degree_preserving(neurons, rng)
        m = _expand(neurons, units_per_neuron)
        m_id = _expand(sub(pre, post, identity), units_per_neuron)
        if control == "random":
            m = _random_blocks(m, block_size, rng)
        sign = np.repeat(gain[members[pre][orders[pre]]], units_per_neuron)
        return LayerMask(
            pre=pre,
            post=post,
            mask=torch.from_numpy(m),
            sign=torch.from_numpy(sign.astype(np.float32)),
            empty_rows=int((~m.any(1)).sum()),
            fill_identity_order=_fill(m_id, block_size),
            fill=_fill(m, block_size),
        )

    return LaminarStack(
        pathway=tuple(pathway),
        units_per_neuron=units_per_neuron,
        block_size=block_size,
        sizes={lay: int(members[lay].size * units_per_neuron) for lay in pathway},
        neuron_index={lay: members[lay][orders[lay]] for lay in pathway},
        layers=[build(a, b) for a, b in pairs],
        extra=[build(a, b) for a, b in extra_pairs],
        control=control,
    )


def _type_order(column: Column, members: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Excitatory first, then by cell type (stable)."""
    out = {}
    for lay, idx in members.items():
        keys = np.char.add(np.where(column.excitatory[idx], "0", "1").astype(str), column.cell_type[idx].astype(str))
        out[lay] = np.argsort(keys, kind="stable")
    return out


def _rcm_order(column: Column, members: dict[str, np.ndarray], adj: sp.csr_matrix, pairs) -> dict[str, np.ndarray]:
    """Cell type first, then reverse Cuthill-McKee on the layer's co-connectivity graph
    (shared inputs from the previous layer plus shared targets in the next)."""
    type_rank = _type_order(column, members)
    out = {}
    for lay, idx in members.items():
        co = sp.csr_matrix((idx.size, idx.size))
        for pre, post in pairs:
            if post == lay:
                m_in = adj[idx][:, members[pre]].astype(np.float64)
                co = co + m_in @ m_in.T
            if pre == lay:
                m_out = adj[members[post]][:, idx].astype(np.float64)
                co = co + m_out.T @ m_out
        rcm = np.asarray(reverse_cuthill_mckee(sp.csr_matrix(co), symmetric_mode=True))
        rcm_rank = np.empty(idx.size, dtype=np.int64)
        rcm_rank[rcm] = np.arange(idx.size)
        type_key = np.empty(idx.size, dtype=np.int64)
        type_key[type_rank[lay]] = np.arange(idx.size)
        cls = column.cell_type[idx]
        # keep cell-type groups contiguous (by their first position in the type order)
        group = np.unique(cls, return_inverse=True)[1]
        group_rank = np.array([type_key[group == g].min() for g in range(group.max() + 1)])[group]
        out[lay] = np.lexsort((rcm_rank, group_rank))
    return out


def _random_blocks(mask: np.ndarray, b: int, rng: np.random.Generator) -> np.ndarray:
    """Move every nonzero ``b x b`` block to a random position (content kept)."""
    n_out, n_in = mask.shape
    R, C = -(-n_out // b), -(-n_in // b)
    padded = np.zeros((R * b, C * b), dtype=bool)
    padded[:n_out, :n_in] = mask
    blocks = padded.reshape(R, b, C, b).transpose(0, 2, 1, 3)  # [R, C, b, b]
    nz = np.flatnonzero(blocks.any(axis=(2, 3)).ravel())
    dest = rng.choice(R * C, size=nz.size, replace=False)
    out = np.zeros_like(blocks).reshape(R * C, b, b)
    out[dest] = blocks.reshape(R * C, b, b)[nz]
    return out.reshape(R, C, b, b).transpose(0, 2, 1, 3).reshape(R * b, C * b)[:n_out, :n_in]


def rewire_degree_preserving(adj: np.ndarray, rng: np.random.Generator, trades_per_row: int = 10) -> np.ndarray:
    """Degree-preserving rewiring of a bipartite adjacency ``[post, pre]`` (bool): every row sum
    (in-degree) and column sum (out-degree) is kept, no pair appears twice, partners are mixed.

    Curveball algorithm (Strona et al. 2014, Nat. Commun. 5:4114): ``trades_per_row * rows``
    times, two rows pool the partners only one of them has and deal them out again at random in
    the same numbers.
    """
    adj = np.asarray(adj, dtype=bool)
    n_rows = adj.shape[0]
    rows = [np.flatnonzero(r) for r in adj]
    if n_rows < 2:
        return adj.copy()
    for _ in range(trades_per_row * n_rows):
        i, j = rng.choice(n_rows, size=2, replace=False)
        a, b = rows[i], rows[j]
        only_a, only_b = np.setdiff1d(a, b, assume_unique=True), np.setdiff1d(b, a, assume_unique=True)
        if only_a.size == 0 or only_b.size == 0:
            continue
        pool = rng.permutation(np.concatenate([only_a, only_b]))
        shared = np.intersect1d(a, b, assume_unique=True)
        rows[i] = np.sort(np.concatenate([shared, pool[: only_a.size]]))
        rows[j] = np.sort(np.concatenate([shared, pool[only_a.size :]]))
    out = np.zeros_like(adj)
    for i, r in enumerate(rows):
        out[i, r] = True
    return out
