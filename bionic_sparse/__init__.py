"""bionic-sparse: block-sparse connectome layers with Triton kernels and a fast CPU path."""

from . import ops  # noqa: F401  (registers the bionic_sparse:: custom ops)
from .format import BlockFill, BlockSparseMatrix, StoragePlan, storage_plan
from .functional import bsr_linear, plasticity_update
from .nn import SparseConnectomeLinear
from .noise import synapse_noise

__version__ = "0.1.0"

__all__ = [
    "BlockFill",
    "BlockSparseMatrix",
    "SparseConnectomeLinear",
    "StoragePlan",
    "storage_plan",
    "bsr_linear",
    "plasticity_update",
    "synapse_noise",
    "__version__",
]
