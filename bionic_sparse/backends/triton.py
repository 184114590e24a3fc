"""The Triton backend: the kernel launchers of :mod:`bionic_sparse.triton_kernels` implement the
contract of :mod:`bionic_sparse.backends` directly (CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``)."""

from ..triton_kernels.bsr_linear import bsr_linear_dx, bsr_linear_fwd
from ..triton_kernels.bsr_sdd import bsr_linear_dw, bsr_plasticity_

__all__ = ["bsr_linear_fwd", "bsr_linear_dx", "bsr_linear_dw", "bsr_plasticity_"]
