"""Neuron orders that raise block fill and locality, applied to a connectome and undone exactly.

A connectome's neuron order decides how its synapses fall into ``b x b`` blocks (fill) and how
far apart in memory the activities of connected neurons sit (cache locality of the element-level
products). Orders (:data:`ORDERS`):

* ``"identity"``: as loaded (the synthetic volume: by layer and class, random within);
* ``"laminar-spatial"``: by layer, then along a Morton (Z-order) curve of the lateral soma
  position: neighbours in a layer get neighbouring indices;
* ``"spatial"``: the Morton curve of the lateral position alone (layers interleaved);
* ``"rcm"``: reverse Cuthill-McKee of the symmetrised adjacency (scipy), a bandwidth reducer;
* ``"metis"``: graph partitioning (METIS k-way, through the optional ``pymetis``) of the
  symmetrised adjacency into parts of :data:`METIS_PART` neurons, the parts in the Morton order of
  their centroids, by layer and Morton key within a part: connected neurons share a part, so
  their synapses gather in few blocks.

:func:`block_fill_report` measures every order's fill at several block sizes;
:func:`reorder` returns the permuted connectome with ``meta["order"]`` and the permutation, and
:func:`to_original` / :func:`to_reordered` move per-neuron vectors between the two orders.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .column import LAYERS, Column

__all__ = ["ORDERS", "neuron_order", "reorder", "to_original", "to_reordered", "block_fill_report"]

ORDERS = ("identity", "laminar-spatial", "spatial", "rcm", "metis")
METIS_PART = 64  # neurons per METIS part: 4 x 4 blocks of 16, one block of 64


def _morton(xz: np.ndarray, bits: int = 16) -> np.ndarray:
    """Z-order key of 2-D points (``bits`` per axis after scaling to the bounding box)."""
    lo, hi = xz.min(0), xz.max(0)
    q = ((xz - lo) / np.maximum(hi - lo, 1e-9) * (2**bits - 1)).astype(np.uint64)
    key = np.zeros(len(xz), dtype=np.uint64)
    for bit in range(bits):
        for axis in range(2):
            key |= ((q[:, axis] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(2 * bit + axis)
    return key


def neuron_order(column: Column, method: str) -> np.ndarray:
    """``order[new] = old``: the neuron at new index ``i`` is old neuron ``order[i]``."""
    n = column.n_neurons
    if method == "identity":
        return np.arange(n)
    if method in ("laminar-spatial", "spatial"):
        key = _morton(column.position[:, [0, 2]])
        if method == "spatial":
            return np.argsort(key, kind="stable")
        layer = np.array([LAYERS.index(lay) for lay in column.layer])
        return np.lexsort((key, ~column.excitatory, layer))
    if method == "rcm":
        from scipy.sparse.csgraph import reverse_cuthill_mckee

        return np.asarray(reverse_cuthill_mckee(_symmetric(column), symmetric_mode=True), dtype=np.int64)
    if method == "metis":
        return _metis_order(column)
    raise ValueError(f"method must be one of {ORDERS}, got {method!r}")


def _symmetric(column: Column) -> sp.csr_matrix:
    """The undirected graph of the connectome (an edge where either direction has a synapse)."""
    n = column.n_neurons
    adj = sp.csr_matrix((np.ones(column.pre.size, dtype=np.int8), (column.pre, column.post)), shape=(n, n))
    sym = (adj + adj.T).tocsr()
    sym.setdiag(0)
    sym.eliminate_zeros()
    return sym


def _metis_order(column: Column, part: int = METIS_PART) -> np.ndarray:
    try:
        import pymetis
    except ImportError:
        raise ImportError("order 'metis' needs pymetis: pip install 'bionic-sparse[metis]'") from None
    n = column.n_neurons
    xz = column.position[:, [0, 2]]
    n_parts = -(-n // part)
    if n_parts > 1:
        sym = _symmetric(column)
        _, parts = pymetis.part_graph(n_parts, pymetis.CSRAdjacency(sym.indptr, sym.indices))
        del sym
        parts = np.asarray(parts, dtype=np.int64)
    else:
        parts = np.zeros(n, dtype=np.int64)
    # neighbouring parts get neighbouring indices: parts in the Morton order of their centroids
    count = np.maximum(np.bincount(parts, minlength=n_parts), 1)
    centroid = np.stack([np.bincount(parts, weights=xz[:, k], minlength=n_parts) / count for k in range(2)], 1)
    part_rank = np.empty(n_parts, dtype=np.int64)
    part_rank[np.argsort(_morton(centroid), kind="stable")] = np.arange(n_parts)
    layer = np.array([LAYERS.index(lay) for lay in column.layer])
    return np.lexsort((_morton(xz), ~column.excitatory, layer, part_rank[parts]))


def reorder(column: Column, method: str = "laminar-spatial") -> tuple[Column, np.ndarray]:
    """``(permuted column, order)``: neuron ``i`` of the result is neuron ``order[i]`` of
    ``column``; edges are renumbered and sorted by (pre, post); ``meta["order"]`` names the
    method. :func:`to_original` undoes it for any per-neuron vector."""
    order = neuron_order(column, method)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    pre = rank[column.pre].astype(column.pre.dtype)
    post = rank[column.post].astype(column.post.dtype)
    key = np.argsort(pre.astype(np.int64) * column.n_neurons + post, kind="stable")
    size = column.size[key] if column.size.size else column.size
    permuted = Column(
        neuron_id=column.neuron_id[order],
        cell_type=column.cell_type[order],
        excitatory=column.excitatory[order],
        layer=column.layer[order],
        position=column.position[order],
        pre=pre[key],
        post=post[key],
        n_synapses=column.n_synapses[key],
        size=size,
        meta=dict(column.meta, order=method),
    )
    return permuted, order


def to_original(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """A per-neuron array in the reordered indexing -> the original one (last axis)."""
    out = np.empty_like(values)
    out[..., order] = values
    return out


def to_reordered(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """A per-neuron array in the original indexing -> the reordered one (last axis)."""
    return values[..., order]


def block_fill_report(column: Column, block_sizes=(16, 32, 64), orders=ORDERS) -> dict:
    """For each order and block size: stored blocks, mean fill (synapses / stored slots), the
    mean index distance ``|pre - post|`` of the synapses (a proxy for cache locality) and the
    seconds the order took; as a dict ready for JSON. The matrix is ``W[post, pre]`` of the
    connectome. An order whose optional dependency is missing gets ``{"unavailable": reason}``."""
    import time

    import torch

    n = column.n_neurons
    report: dict = {"n_neurons": n, "n_synapses": int(column.pre.size), "orders": {}}
    for method in orders:
        t0 = time.perf_counter()
        try:
            order = neuron_order(column, method)
        except ImportError as e:  # an order whose optional dependency is missing: say so, go on
            report["orders"][method] = {"unavailable": str(e)}
            continue
        seconds = time.perf_counter() - t0
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        pre = torch.from_numpy(rank[column.pre].astype(np.int64))
        post = torch.from_numpy(rank[column.post].astype(np.int64))
        entry = {"order_seconds": round(seconds, 2), "mean_index_distance": float((pre - post).abs().double().mean())}
        for b in block_sizes:
            C = -(-n // b)
            nnzb = int(torch.unique((post // b) * C + pre // b).numel())
            entry[f"b{b}"] = {"blocks": nnzb, "fill": column.pre.size / max(nnzb * b * b, 1)}
        report["orders"][method] = entry
        del pre, post
    return report
