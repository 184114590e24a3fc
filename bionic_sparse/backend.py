"""Backend choice for the block-sparse ops: the one place where dispatch thresholds live.

CPU thresholds come from the training-step measurements in ``kernels.md`` section 6 (fp32,
n = 4096, 2-core AMD EPYC): the gather -> bmm -> index_add block kernel ("blockT") beats dense masked
matmul at every sparsity for b >= 32 (17.5 ms vs 90.6 ms at 90 % with b = 64), and for b = 16
from about 90 % block sparsity (31.8 ms vs 88.5 ms at 95 %; 65.5 vs 90.6 at 90 %); below that,
and for tiny blocks whose per-block bmm overhead dominates, the dense masked product wins.
``benchmarks/test_bench_bsr_linear.py::test_cpu_dispatch`` re-measures the crossover.
"""

from __future__ import annotations

import os

import torch

__all__ = ["cpu_method", "use_triton", "BLOCKT_MIN_BLOCK", "BLOCKT_MAX_DENSITY_SMALL"]

# b >= BLOCKT_MIN_BLOCK: always gather-bmm-scatter.
BLOCKT_MIN_BLOCK = 32
# 8 <= b < BLOCKT_MIN_BLOCK: gather-bmm-scatter only at block density <= this.
BLOCKT_MAX_DENSITY_SMALL = 0.15
BLOCKT_MIN_BLOCK_SMALL = 8

_ENV_BACKEND = "BIONIC_SPARSE_BACKEND"


def cpu_method(block_size: int, nnzb: int, n_block_rows: int, n_block_cols: int) -> str:
    """``"blockT"`` (gather-bmm-index_add) or ``"dense"`` (dense masked matmul) for a CPU call.

    ``BIONIC_SPARSE_BACKEND=blockT|dense`` forces one (for tests and benchmarks).
    """
    forced = os.environ.get(_ENV_BACKEND, "")
    if forced in ("blockT", "dense"):
        return forced
    if block_size >= BLOCKT_MIN_BLOCK:
        return "blockT"
    density = nnzb / max(n_block_rows * n_block_cols, 1)
    if block_size >= BLOCKT_MIN_BLOCK_SMALL and density <= BLOCKT_MAX_DENSITY_SMALL:
        return "blockT"
    return "dense"


def use_triton(t: torch.Tensor) -> bool:
    """True when the Triton kernels should run on ``t``'s device.

    CUDA tensors always use Triton. CPU tensors use it only when ``BIONIC_SPARSE_BACKEND=triton``
    (with ``TRITON_INTERPRET=1`` set before Triton is imported), which the kernel tests use.
    """
    if t.device.type == "cuda":
        return True
    return t.device.type == "cpu" and os.environ.get(_ENV_BACKEND, "") == "triton"
