"""The Triton backend: the kernel launchers of :mod:`bionic_sparse.triton_kernels` behind the
contract of :mod:`bionic_sparse.backends` (CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``).

What runs for a matrix depends on its block size, never on a silent fallback:

* ``b >= 16`` (block storage): ``bsr_linear`` (``tl.dot`` tiles over the block rows and the
  transposed index) and ``bsr_sdd`` (weight gradient, Hebbian correlation, plasticity);
* ``b = 1`` (element storage from :meth:`bionic_sparse.BlockSparseMatrix.from_synapses`, or
  blocks of one): ``csr_linear``, one program per output neuron gathering ``BK`` synapses at a
  time; its input gradient scatters with fp32 atomics (element storage keeps no transposed
  index), so its last bits may vary from run to run on a GPU;
* any other block size is refused by :func:`kernels_for` with the sizes that run.
"""

from __future__ import annotations

import torch

from ..triton_kernels import bsr_linear as _linear
from ..triton_kernels import bsr_sdd as _sdd
from ..triton_kernels import csr_linear as _csr
from ..triton_kernels._common import GPU_BLOCK_SIZES

__all__ = ["bsr_linear_fwd", "bsr_linear_dx", "bsr_linear_dw", "bsr_plasticity_", "kernels_for"]


def kernels_for(block_size: int) -> str:
    """The kernel family that runs a matrix of ``block_size`` on this backend (for reports)."""
    if block_size == 1:
        return "triton csr_linear (element-level CSR, one program per output neuron)"
    if block_size in GPU_BLOCK_SIZES:
        return f"triton bsr_linear + bsr_sdd (b={block_size} tiles)"
    raise ValueError(
        f"block_size {block_size} has no Triton kernels: use 1 (element storage) or one of {GPU_BLOCK_SIZES}"
    )


def _element(block_size: int) -> bool:
    """True for the ``csr_linear`` kernels (block size 1); a size with no kernels raises (:func:`kernels_for`)."""
    kernels_for(block_size)
    return block_size == 1


def bsr_linear_fwd(*, x, values, crow, col, **kwargs):
    if _element(values.shape[-1]):
        return _csr.csr_linear_fwd(x=x, values=values, crow=crow, col=col, **kwargs)
    return _linear.bsr_linear_fwd(x=x, values=values, crow=crow, col=col, **kwargs)


def bsr_linear_dx(*, dy, values, crow, col, ccol_t, row_t, perm_t, **kwargs):
    if _element(values.shape[-1]):
        return _csr.csr_linear_dx(dy=dy, values=values, crow=crow, col=col, **kwargs)
    return _linear.bsr_linear_dx(dy=dy, values=values, ccol_t=ccol_t, row_t=row_t, perm_t=perm_t, **kwargs)


def bsr_linear_dw(*, crow, row, block_size, **kwargs):
    if _element(block_size):
        return _csr.csr_linear_dw(crow=crow, **kwargs)
    return _sdd.bsr_linear_dw(row=row, block_size=block_size, **kwargs)


def bsr_plasticity_(*, values: torch.Tensor, crow, row, **kwargs):
    if _element(values.shape[-1]):
        return _csr.csr_plasticity_(values=values, crow=crow, **kwargs)
    return _sdd.bsr_plasticity_(values=values, row=row, **kwargs)
