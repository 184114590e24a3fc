"""Block-sparse CSR format for connectome-constrained weights (no math lives here).

A ``BlockSparseMatrix`` stores a logical ``(n_out, n_in)`` matrix as ``nnzb`` dense ``b x b``
blocks in one value tensor ``values[nnzb, b, b]`` (row-major block order, row-major inside each
block) with four index views over the *same* blocks:

* ``crow[R + 1]``, ``col[nnzb]``: block-row CSR (forward, ``y = x W^T``);
* ``row[nnzb]``: COO block rows (one program per block for the weight gradient);
* ``ccol_t[C + 1]``, ``row_t[nnzb]``, ``perm_t[nnzb]``: block-column CSR of ``W^T``;
  ``perm_t[j]`` is the index into ``values`` of the j-th block in column-major order, so the
  input-gradient kernel reads ``values[perm_t[j]]`` transposed and no second value array exists.

``R = ceil(n_out / b)`` and ``C = ceil(n_in / b)``: the logical shape need not be a multiple of
``b``; blocks on the ragged edge are padded and their out-of-range part is masked off.
``synapse_mask[nnzb, b, b]`` (bool, optional) marks the synapses present inside each block; it is
``None`` when every stored block is full (all ``b * b`` entries inside the logical shape are
synapses). All index tensors are int32 and built with vectorised argsort/bincount/cumsum.

**Element storage** (``block_size = 1`` without the transposed index, :meth:`from_synapses`): for
a matrix whose synapses fill few blocks, e.g. a whole volume at neuron resolution. It keeps one
CSR, ``values[nnz, 1, 1]``, ``crow`` and ``col`` (plus the ``[C + 1]`` column pointers ``ccol_t``);
``row``, ``row_t`` and ``perm_t`` are empty, since the element-level products
(:mod:`bionic_sparse.backends.element`) scatter for the transpose and need neither. That is
8 bytes per synapse, the size of an int32 CSR and 2/3 of torch's int64 CSR.
:func:`storage_plan` chooses between blocks and element storage for one matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["BlockSparseMatrix", "BlockFill", "StoragePlan", "as_mask_tensor", "storage_plan"]

_INDEX_DTYPE = torch.int32


def _check_block_size(block_size: Any) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TypeError(f"block_size must be an int, got {type(block_size).__name__}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    return block_size


def _check_shape(shape: Any) -> tuple[int, int]:
    try:
        n_out, n_in = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise TypeError(f"shape must be a pair of ints (n_out, n_in), got {shape!r}") from None
    if n_out < 0 or n_in < 0:
        raise ValueError(f"shape must be non-negative, got {shape!r}")
    return n_out, n_in


def as_mask_tensor(mask: Any, name: str = "mask") -> torch.Tensor:
    """Validate a dense mask (bool or floating, finite) and return it as a bool tensor."""
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(mask).__name__}")
    if mask.dim() != 2:
        raise ValueError(f"{name} must be 2-D [n_out, n_in], got shape {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        return mask
    if not mask.dtype.is_floating_point:
        raise TypeError(f"{name} must be a bool or floating tensor, got dtype {mask.dtype}")
    if not torch.isfinite(mask).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return mask != 0


@dataclass(frozen=True)
class BlockFill:
    """Block statistics of a ``BlockSparseMatrix``.

    ``fill[k]`` is the fraction of block k's ``b * b`` entries that are synapses; ``block_density``
    is ``nnzb / (R * C)``; ``element_density`` is synapses over ``n_out * n_in``.
    """

    nnzb: int
    n_blocks: int
    block_density: float
    element_density: float
    n_synapses: int
    mean_fill: float
    fill: torch.Tensor

    @property
    def block_sparsity(self) -> float:
        return 1.0 - self.block_density


class BlockSparseMatrix:
    """Block-sparse CSR matrix with a transposed view over the same blocks.

    Construct with :meth:`from_dense`, :meth:`from_block_mask`, :meth:`from_scipy` or
    :meth:`from_edges`; the raw constructor takes block coordinates ``(block_row, block_col)``
    in any order and sorts them (``values`` and ``synapse_mask`` are permuted along).

    Args:
        block_row, block_col: int tensors ``[nnzb]`` of block coordinates (no duplicates).
        shape: logical ``(n_out, n_in)``.
        block_size: ``b``.
        values: optional ``[nnzb, b, b]`` floating tensor (zeros of ``dtype`` if omitted).
        synapse_mask: optional bool ``[nnzb, b, b]``; ``None`` means every in-range entry of
            every stored block is a synapse.
    """

    def __init__(
        self,
        block_row: torch.Tensor,
        block_col: torch.Tensor,
        shape: tuple[int, int],
        block_size: int,
        values: torch.Tensor | None = None,
        synapse_mask: torch.Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        transposed_index: bool = True,
    ) -> None:
        b = _check_block_size(block_size)
        if not transposed_index and (b != 1 or synapse_mask is not None):
            raise ValueError("transposed_index=False (element storage) needs block_size 1 and no synapse_mask")
        n_out, n_in = _check_shape(shape)
        self.block_size = b
        self.shape = (n_out, n_in)
        self.n_block_rows = math.ceil(n_out / b)
        self.n_block_cols = math.ceil(n_in / b)
        block_row = torch.as_tensor(block_row).to(torch.int64).flatten()
        block_col = torch.as_tensor(block_col).to(torch.int64).flatten()
        if block_row.shape != block_col.shape:
            raise ValueError(
                f"block_row and block_col must have the same length, got {block_row.numel()} and {block_col.numel()}"
            )
        nnzb = block_row.numel()
        if nnzb and (block_row.min() < 0 or block_row.max() >= self.n_block_rows):
            raise ValueError(f"block_row out of range [0, {self.n_block_rows})")
        if nnzb and (block_col.min() < 0 or block_col.max() >= self.n_block_cols):
            raise ValueError(f"block_col out of range [0, {self.n_block_cols})")
        device = block_row.device
        key = block_row * max(self.n_block_cols, 1) + block_col
        order = torch.argsort(key, stable=True)
        key = key[order]
        if nnzb > 1 and bool((key[1:] == key[:-1]).any()):
            raise ValueError("duplicate blocks in (block_row, block_col)")
        block_row, block_col = block_row[order], block_col[order]

        if values is None:
            values = torch.zeros(nnzb, b, b, dtype=dtype, device=device)
        else:
            if values.shape != (nnzb, b, b):
                raise ValueError(f"values must have shape {(nnzb, b, b)}, got {tuple(values.shape)}")
            if not values.dtype.is_floating_point:
                raise TypeError(f"values must be floating, got {values.dtype}")
            values = values[order.to(values.device)]
        if synapse_mask is not None:
            if synapse_mask.shape != (nnzb, b, b):
                raise ValueError(f"synapse_mask must have shape {(nnzb, b, b)}, got {tuple(synapse_mask.shape)}")
            synapse_mask = synapse_mask.to(torch.bool)[order.to(synapse_mask.device)]
            # Entries outside the logical shape are never synapses.
            synapse_mask = synapse_mask & self._in_range_mask(block_row, block_col, synapse_mask.device)
        self.values = values
        self.synapse_mask = synapse_mask
        self._build_index(block_row, block_col, transposed_index)

    def _in_range_mask(self, block_row: torch.Tensor, block_col: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Bool ``[nnzb, b, b]``: entries that fall inside the logical shape."""
        b = self.block_size
        o = torch.arange(b, device=device)
        rows_ok = (block_row.to(device)[:, None] * b + o) < self.shape[0]  # [nnzb, b]
        cols_ok = (block_col.to(device)[:, None] * b + o) < self.shape[1]  # [nnzb, b]
        return rows_ok[:, :, None] & cols_ok[:, None, :]

    def _build_index(self, block_row: torch.Tensor, block_col: torch.Tensor, transposed: bool = True) -> None:
        R, C = self.n_block_rows, self.n_block_cols
        zero = torch.zeros(1, dtype=torch.int64, device=block_row.device)
        self.col = block_col.to(_INDEX_DTYPE)
        self.crow = torch.cat([zero, torch.bincount(block_row, minlength=R).cumsum(0)]).to(_INDEX_DTYPE)
        if not transposed:  # element storage: one CSR (and the column pointers, for the shape)
            empty = torch.zeros(0, dtype=_INDEX_DTYPE, device=block_row.device)
            self.row, self.row_t, self.perm_t = empty, empty.clone(), empty.clone()
            self.ccol_t = torch.cat([zero, torch.bincount(block_col, minlength=C).cumsum(0)]).to(_INDEX_DTYPE)
            return
        self.row = block_row.to(_INDEX_DTYPE)
        perm_t = torch.argsort(block_col * max(R, 1) + block_row, stable=True)
        self.perm_t = perm_t.to(_INDEX_DTYPE)
        self.row_t = block_row[perm_t].to(_INDEX_DTYPE)
        self.ccol_t = torch.cat([zero, torch.bincount(block_col, minlength=C).cumsum(0)]).to(_INDEX_DTYPE)

    @classmethod
    def from_parts(cls, parts: dict[str, Any]) -> BlockSparseMatrix:
        """Rebuild from already-sorted index tensors without recomputing anything (``parts`` maps
        every attribute: the index views, ``values``, ``synapse_mask``, ``block_size``, ``shape``,
        ``n_block_rows``, ``n_block_cols``), e.g. a view over a module's buffers."""
        self = cls.__new__(cls)
        self.__dict__.update(parts)
        return self

    @property
    def nnzb(self) -> int:
        return int(self.col.numel())

    @property
    def is_element(self) -> bool:
        """True for element storage (one CSR, no COO rows, no transposed index)."""
        return self.block_size == 1 and self.row.numel() != self.col.numel()

    def coo_row(self) -> torch.Tensor:
        """Block row of every stored block ``[nnzb]`` (int32): ``row``, or derived from ``crow``
        for element storage (a temporary, not kept)."""
        if self.row.numel() == self.col.numel():
            return self.row
        counts = (self.crow[1:] - self.crow[:-1]).long()
        ids = torch.arange(counts.numel(), dtype=_INDEX_DTYPE, device=self.crow.device)
        return torch.repeat_interleave(ids, counts, output_size=self.nnzb)

    def storage_bytes(self) -> int:
        """Bytes of the stored values, index views and synapse mask."""
        tensors = [self.values, self.synapse_mask, *self.index_tensors().values()]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    def index_tensors(self) -> dict[str, torch.Tensor]:
        """The int32 index views, keyed by name (``crow, col, row, ccol_t, row_t, perm_t``)."""
        return {k: getattr(self, k) for k in ("crow", "col", "row", "ccol_t", "row_t", "perm_t")}

    def element_mask(self) -> torch.Tensor:
        """Bool ``[nnzb, b, b]``: synapses inside each block (in-range entries if no mask)."""
        if self.synapse_mask is not None:
            return self.synapse_mask
        if self.is_element:
            return torch.ones(self.nnzb, 1, 1, dtype=torch.bool, device=self.values.device)
        return self._in_range_mask(self.row.long(), self.col.long(), self.values.device)

    def __repr__(self) -> str:
        return (
            f"BlockSparseMatrix(shape={self.shape}, block_size={self.block_size}, nnzb={self.nnzb}, "
            f"block_density={self.nnzb / max(self.n_block_rows * self.n_block_cols, 1):.3f}, "
            f"synapse_mask={'yes' if self.synapse_mask is not None else 'no'}, dtype={self.dtype}, "
            f"device={self.device})"
        )

    @classmethod
    def from_block_mask(
        cls,
        block_mask: torch.Tensor,
        block_size: int,
        shape: tuple[int, int] | None = None,
        *,
        dtype: torch.dtype = torch.float32,
    ) -> BlockSparseMatrix:
        """From a block-level mask ``[R, C]``; every stored block is full (up to ``shape``)."""
        block_mask = as_mask_tensor(block_mask, "block_mask")
        b = _check_block_size(block_size)
        R, C = block_mask.shape
        if shape is None:
            shape = (R * b, C * b)
        n_out, n_in = _check_shape(shape)
        if (math.ceil(n_out / b), math.ceil(n_in / b)) != (R, C):
            raise ValueError(f"block_mask of shape {(R, C)} does not cover shape {shape} with block_size {b}")
        block_row, block_col = block_mask.nonzero(as_tuple=True)
        return cls(block_row, block_col, shape, b, dtype=dtype)

    @classmethod
    def from_dense(
        cls,
        mask: torch.Tensor,
        block_size: int,
        weight: torch.Tensor | None = None,
        *,
        dtype: torch.dtype | None = None,
    ) -> BlockSparseMatrix:
        """From a dense element mask ``[n_out, n_in]`` (bool or float; nonzero = synapse).

        Blocks holding at least one synapse are stored. If ``weight`` (same shape) is given its
        entries are copied into the blocks (zero off the mask); otherwise values are zero.
        """
        mask = as_mask_tensor(mask)
        b = _check_block_size(block_size)
        n_out, n_in = mask.shape
        if weight is not None:
            if not isinstance(weight, torch.Tensor):
                raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
            if weight.shape != mask.shape:
                raise ValueError(f"weight must have the mask's shape {tuple(mask.shape)}, got {tuple(weight.shape)}")
        R, C = math.ceil(n_out / b), math.ceil(n_in / b)
        padded = mask.new_zeros(R * b, C * b)
        padded[:n_out, :n_in] = mask
        blocks = padded.view(R, b, C, b).permute(0, 2, 1, 3)  # [R, C, b, b]
        block_row, block_col = blocks.any(dim=(2, 3)).nonzero(as_tuple=True)
        syn = blocks[block_row, block_col]  # [nnzb, b, b], row-major order already
        out_dtype = dtype or (weight.dtype if weight is not None and weight.is_floating_point() else torch.float32)
        self = cls(block_row, block_col, (n_out, n_in), b, dtype=out_dtype)
        in_range = self._in_range_mask(self.row.long(), self.col.long(), syn.device)
        if not bool((syn == in_range).all()):
            self.synapse_mask = syn
        if weight is not None:
            self.values = self.gather_blocks(weight.to(out_dtype))
        return self

    @classmethod
    def from_scipy(cls, matrix: Any, block_size: int, *, dtype: torch.dtype = torch.float32) -> BlockSparseMatrix:
        """From a scipy.sparse matrix/array (CSR, COO or any format with ``tocoo``).

        Stored entries (explicit zeros included) are synapses; their values are copied.
        """
        try:
            coo = matrix.tocoo()
        except AttributeError:
            raise TypeError(f"matrix must be a scipy.sparse matrix, got {type(matrix).__name__}") from None
        data = np.asarray(coo.data)
        if not np.isfinite(data).all():
            raise ValueError("matrix contains NaN or Inf")
        return cls.from_edges(
            torch.from_numpy(np.asarray(coo.row, dtype=np.int64)),
            torch.from_numpy(np.asarray(coo.col, dtype=np.int64)),
            coo.shape,
            block_size,
            weight=torch.from_numpy(data.astype(np.float64)),
            dtype=dtype,
        )

    @classmethod
    def from_edges(
        cls,
        post: torch.Tensor,
        pre: torch.Tensor,
        shape: tuple[int, int],
        block_size: int,
        weight: torch.Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float32,
    ) -> BlockSparseMatrix:
        """From an edge list: synapse ``k`` connects presynaptic ``pre[k]`` to postsynaptic ``post[k]``.

        ``shape = (n_out, n_in) = (n_post, n_pre)``. Duplicate edges are merged (weights summed).
        """
        b = _check_block_size(block_size)
        n_out, n_in = _check_shape(shape)
        post = torch.as_tensor(post).to(torch.int64).flatten()
        pre = torch.as_tensor(pre).to(torch.int64).flatten()
        if post.shape != pre.shape:
            raise ValueError(f"post and pre must have the same length, got {post.numel()} and {pre.numel()}")
        if post.numel() and (post.min() < 0 or post.max() >= n_out):
            raise ValueError(f"post indices must lie in [0, {n_out})")
        if pre.numel() and (pre.min() < 0 or pre.max() >= n_in):
            raise ValueError(f"pre indices must lie in [0, {n_in})")
        C = math.ceil(n_in / b)
        block_key = (post // b) * C + (pre // b)
        uniq, inverse = torch.unique(block_key, return_inverse=True)
        nnzb = uniq.numel()
        flat = inverse * (b * b) + (post % b) * b + (pre % b)
        syn = torch.zeros(nnzb * b * b, dtype=torch.bool)
        syn[flat] = True
        values = torch.zeros(nnzb * b * b, dtype=dtype)
        if weight is not None:
            weight = torch.as_tensor(weight).flatten()
            if weight.numel() != post.numel():
                raise ValueError(f"weight must have one entry per edge ({post.numel()}), got {weight.numel()}")
            values.index_add_(0, flat, weight.to(dtype))
        self = cls(uniq // C, uniq % C, (n_out, n_in), b, values=values.view(nnzb, b, b), dtype=dtype)
        syn = syn.view(nnzb, b, b)  # uniq is sorted, so this is already row-major block order
        in_range = self._in_range_mask(self.row.long(), self.col.long(), syn.device)
        if not bool((syn == in_range).all()):
            self.synapse_mask = syn
        return self

    @classmethod
    def from_synapses(
        cls,
        post: Any,
        pre: Any,
        shape: tuple[int, int],
        weight: Any = None,
        *,
        dtype: torch.dtype = torch.float32,
    ) -> BlockSparseMatrix:
        """Element storage (see the module docstring) of synapses ``pre[k] -> post[k]``.

        ``shape = (n_out, n_in) = (n_post, n_pre)``; numpy or torch integer arrays (int32 kept:
        a volume's edge list is not copied to int64 whole). Duplicate pairs are merged (weights
        summed), as in :meth:`from_edges`.
        """
        n_out, n_in = _check_shape(shape)
        post = torch.as_tensor(post).flatten()
        pre = torch.as_tensor(pre).flatten()
        for name, t, n in (("post", post, n_out), ("pre", pre, n_in)):
            if t.dtype.is_floating_point or t.dtype == torch.bool:
                raise TypeError(f"{name} must hold integer indices, got {t.dtype}")
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
                raise ValueError(f"{name} indices must lie in [0, {n})")
        if post.shape != pre.shape:
            raise ValueError(f"post and pre must have the same length, got {post.numel()} and {pre.numel()}")
        key = post.to(torch.int64) * max(n_in, 1) + pre
        order = torch.argsort(key)
        key = key[order]
        values = None
        if weight is not None:
            weight = torch.as_tensor(weight).flatten()
            if weight.numel() != post.numel():
                raise ValueError(f"weight must have one entry per synapse ({post.numel()}), got {weight.numel()}")
            values = weight[order].to(dtype)
        del order
        if key.numel() > 1 and bool((key[1:] == key[:-1]).any()):
            key, inverse = torch.unique_consecutive(key, return_inverse=True)
            if values is not None:
                values = torch.zeros(key.numel(), dtype=dtype).index_add_(0, inverse, values)
        nnz = key.numel()
        values = torch.zeros(nnz, dtype=dtype) if values is None else values
        return cls(
            key // max(n_in, 1),
            key % max(n_in, 1),
            (n_out, n_in),
            1,
            values=values.view(nnz, 1, 1),
            dtype=dtype,
            transposed_index=False,
        )

    def to_dense(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """Dense ``[n_out, n_in]`` matrix of ``values`` (default: ``self.values``), zero off the mask."""
        values = self.values if values is None else values
        b, R, C = self.block_size, self.n_block_rows, self.n_block_cols
        dense = values.new_zeros(R, C, b, b)
        masked = values if self.synapse_mask is None else values * self.synapse_mask.to(values.device)
        dense[self.coo_row().long(), self.col.long()] = masked
        return dense.permute(0, 2, 1, 3).reshape(R * b, C * b)[: self.shape[0], : self.shape[1]]

    def gather_blocks(self, dense: torch.Tensor) -> torch.Tensor:
        """Entries of a dense ``[n_out, n_in]`` matrix at the synapses, as ``[nnzb, b, b]``."""
        if dense.shape != self.shape:
            raise ValueError(f"dense must have shape {self.shape}, got {tuple(dense.shape)}")
        b, R, C = self.block_size, self.n_block_rows, self.n_block_cols
        padded = dense.new_zeros(R * b, C * b)
        padded[: self.shape[0], : self.shape[1]] = dense
        blocks = padded.view(R, b, C, b).permute(0, 2, 1, 3)[self.coo_row().long(), self.col.long()]
        return blocks * self.element_mask().to(blocks.device)

    def to_dense_mask(self) -> torch.Tensor:
        """Dense bool ``[n_out, n_in]`` synapse mask."""
        b, R, C = self.block_size, self.n_block_rows, self.n_block_cols
        dense = torch.zeros(R, C, b, b, dtype=torch.bool, device=self.col.device)
        dense[self.coo_row().long(), self.col.long()] = self.element_mask().to(self.col.device)
        return dense.permute(0, 2, 1, 3).reshape(R * b, C * b)[: self.shape[0], : self.shape[1]]

    def to_scipy(self, values: torch.Tensor | None = None) -> Any:
        """scipy.sparse CSR ``(n_out, n_in)`` with one stored entry per synapse."""
        import scipy.sparse as sp

        values = self.values if values is None else values
        b = self.block_size
        k, i, j = self.element_mask().cpu().nonzero(as_tuple=True)
        rows = (self.coo_row().long().cpu()[k] * b + i).numpy()
        cols = (self.col.long().cpu()[k] * b + j).numpy()
        data = values.detach().cpu()[k, i, j].double().numpy()
        return sp.csr_matrix((data, (rows, cols)), shape=self.shape)

    def block_fill(self) -> BlockFill:
        """Block statistics: nnzb, block and element density, per-block fill."""
        b = self.block_size
        syn_per_block = self.element_mask().sum(dim=(1, 2))
        n_syn = int(syn_per_block.sum())
        n_blocks = self.n_block_rows * self.n_block_cols
        fill = syn_per_block.double() / (b * b)
        return BlockFill(
            nnzb=self.nnzb,
            n_blocks=n_blocks,
            block_density=self.nnzb / max(n_blocks, 1),
            element_density=n_syn / max(self.shape[0] * self.shape[1], 1),
            n_synapses=n_syn,
            mean_fill=float(fill.mean()) if self.nnzb else 0.0,
            fill=fill,
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> BlockSparseMatrix:
        """Copy to ``device`` and/or cast ``values`` to ``dtype`` (indices stay int32)."""
        parts = dict(self.__dict__)
        for name in ("crow", "col", "row", "ccol_t", "row_t", "perm_t", "synapse_mask"):
            if parts[name] is not None and device is not None:
                parts[name] = parts[name].to(device)
        parts["values"] = self.values.to(device=device, dtype=dtype)
        return BlockSparseMatrix.from_parts(parts)

    def with_values(self, values: torch.Tensor) -> BlockSparseMatrix:
        """Same topology, new ``values[nnzb, b, b]`` (no copy)."""
        if values.shape != self.values.shape:
            raise ValueError(f"values must have shape {tuple(self.values.shape)}, got {tuple(values.shape)}")
        parts = dict(self.__dict__)
        parts["values"] = values
        return BlockSparseMatrix.from_parts(parts)


@dataclass(frozen=True)
class StoragePlan:
    """How one matrix is stored (:func:`storage_plan`): ``method`` is ``"element"`` or
    ``"block"`` with ``block_size``; ``options`` lists every candidate's stored values and bytes;
    ``csr_bytes`` is what torch's element-level CSR takes (float32 values, int64 indices)."""

    shape: tuple[int, int]
    n_synapses: int
    method: str
    block_size: int
    stored_values: int
    bytes: int
    csr_bytes: int
    options: dict[str, dict[str, float]]

    def __str__(self) -> str:
        lines = [
            f"{self.shape[0]} x {self.shape[1]}, {self.n_synapses} synapses: {self.method} storage"
            + (f" (b={self.block_size})" if self.method == "block" else "")
            + f", {self.stored_values} stored values, {self.bytes / 1e6:.1f} MB"
            f" ({self.bytes / max(self.csr_bytes, 1):.2f}x torch's CSR, {self.csr_bytes / 1e6:.1f} MB)"
        ]
        for name, o in self.options.items():
            lines.append(
                f"  {name:<9} fill {o['fill']:.3f}, {int(o['stored_values'])} values, {o['bytes'] / 1e6:.1f} MB"
            )
        return "\n".join(lines)


def storage_plan(
    post: Any,
    pre: Any,
    shape: tuple[int, int],
    block_sizes: tuple[int, ...] = (16, 32, 64),
    max_ratio: float = 1.5,
) -> StoragePlan:
    """Blocks where they are full enough, element storage otherwise.

    For each ``b`` in ``block_sizes`` counts the blocks the synapses ``pre[k] -> post[k]`` touch
    and the bytes block storage would take (values, five int32 index views, a bool synapse mask
    when blocks are not full); element storage takes 8 bytes per synapse. The largest block size
    whose bytes stay within ``max_ratio`` x the element storage wins (blocks run dense ``b x b``
    products); else element storage. The choice depends on the neuron order: reorder first
    (:func:`bionic_sparse.connectome.reorder`).
    """
    n_out, n_in = _check_shape(shape)
    post = torch.as_tensor(post).flatten()
    pre = torch.as_tensor(pre).flatten()
    nnz = int(post.numel())
    element = nnz * 8 + (n_out + 1 + n_in + 1) * 4
    options = {"element": dict(fill=1.0, stored_values=float(nnz), bytes=float(element))}
    best = ("element", 1, nnz, element)
    for b in sorted(block_sizes):
        b = _check_block_size(b)
        C = math.ceil(n_in / b)
        nnzb = int(torch.unique((post.to(torch.int64) // b) * C + pre.to(torch.int64) // b).numel())
        slots = nnzb * b * b
        full = slots == nnz
        size = slots * 4 + (0 if full else slots) + nnzb * 5 * 4 + (math.ceil(n_out / b) + C + 2) * 4
        options[f"block b={b}"] = dict(fill=nnz / max(slots, 1), stored_values=float(slots), bytes=float(size))
        if size <= max_ratio * element:
            best = ("block", b, slots, size)
    method, b, stored, size = best
    return StoragePlan(
        shape=(n_out, n_in),
        n_synapses=nnz,
        method=method,
        block_size=b,
        stored_values=stored,
        bytes=size,
        csr_bytes=nnz * 12 + (n_out + 1) * 8,
        options=options,
    )
