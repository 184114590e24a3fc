"""The Triton backend: the kernel launchers of :mod:`bionic_sparse.triton_kernels` behind the
contract of :mod:`bionic_sparse.backends` (CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``).

The block kernels need the transposed index and the COO rows, which element storage
(:meth:`bionic_sparse.BlockSparseMatrix.from_synapses`) does not keep: such a matrix is refused
here with a clear error rather than run by some other path unannounced.
"""

from __future__ import annotations

import torch

from ..triton_kernels import bsr_linear as _linear
from ..triton_kernels import bsr_sdd as _sdd

__all__ = ["bsr_linear_fwd", "bsr_linear_dx", "bsr_linear_dw", "bsr_plasticity_", "ELEMENT_STORAGE_ERROR"]

ELEMENT_STORAGE_ERROR = (
    "element storage (block_size 1, one CSR without a transposed index) has no Triton kernels yet; "
    "run it on the CPU, or store the matrix in blocks (block_size >= 16) for the GPU"
)


def _refuse_element(values: torch.Tensor, index: torch.Tensor) -> None:
    if values.shape[-1] == 1 and index.numel() != values.shape[0]:
        raise NotImplementedError(ELEMENT_STORAGE_ERROR)


def bsr_linear_fwd(*, x, values, crow, col, **kwargs):
    if values.shape[-1] == 1:  # block size 1 (element storage or not): no tl.dot tile that small
        raise NotImplementedError(ELEMENT_STORAGE_ERROR)
    return _linear.bsr_linear_fwd(x=x, values=values, crow=crow, col=col, **kwargs)


def bsr_linear_dx(*, dy, values, crow, col, ccol_t, row_t, perm_t, **kwargs):
    del crow, col  # the transposed index serves the block kernels
    _refuse_element(values, perm_t)
    return _linear.bsr_linear_dx(dy=dy, values=values, ccol_t=ccol_t, row_t=row_t, perm_t=perm_t, **kwargs)


def bsr_linear_dw(*, crow, row, **kwargs):
    del crow
    if kwargs["block_size"] == 1 and row.numel() != kwargs["col"].numel():
        raise NotImplementedError(ELEMENT_STORAGE_ERROR)
    return _sdd.bsr_linear_dw(row=row, **kwargs)


def bsr_plasticity_(*, values, crow, row, **kwargs):
    del crow
    _refuse_element(values, row)
    return _sdd.bsr_plasticity_(values=values, row=row, **kwargs)
