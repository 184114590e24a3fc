"""pytest-benchmark cases for one training step of a block-sparse layer (fwd + dx + dW).

CPU (runs in CI-sized time): the issue's acceptance case, a 4096 x 4096 layer at 90 % block
sparsity, b = 64, batch 256, fp32, against dense masked ``nn.Linear``; plus the CPU dispatch
crossover. GPU cases (``-m gpu``) time the fused step of ``gpu_bench.py`` against cuBLAS.

    pytest benchmarks -m "not gpu" --benchmark-autosave     # CPU
    pytest benchmarks -m gpu --benchmark-autosave           # GPU
"""

from __future__ import annotations

import os
import platform

import pytest
import torch

import bionic_sparse as bs
from bionic_sparse import BlockSparseMatrix


def _block_mask(n: int, b: int, sparsity: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    blocks = torch.rand(n // b, n // b, generator=g) >= sparsity
    return blocks.repeat_interleave(b, 0).repeat_interleave(b, 1)


def _stamp(benchmark, **info) -> None:
    benchmark.extra_info.update(
        dict(
            info,
            torch=torch.__version__,
            machine=platform.machine(),
            processor=platform.processor(),
            threads=torch.get_num_threads(),
            cpu_count=os.cpu_count(),
            seed=0,
        )
    )


def _train_step(layer: torch.nn.Module, x: torch.Tensor) -> None:
    layer.zero_grad(set_to_none=True)
    layer(x).sum().backward()


class _DenseMaskedLinear(torch.nn.Module):
    """What people write without this library: ``F.linear(x, W * M)``."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.lin = torch.nn.Linear(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.float())

    def forward(self, x):
        return torch.nn.functional.linear(x, self.lin.weight * self.mask, self.lin.bias)


CPU_CASE = dict(n=4096, b=64, sparsity=0.9, batch=256)


@pytest.mark.parametrize("provider", ["sparse", "dense_masked"])
def test_cpu_training_step_4096_b64_90pct(benchmark, provider):
    torch.manual_seed(0)
    n, b, sparsity, batch = CPU_CASE.values()
    mask = _block_mask(n, b, sparsity)
    if provider == "sparse":
        layer = bs.SparseConnectomeLinear(n, n, mask=mask, block_size=b)
    else:
        layer = _DenseMaskedLinear(mask)
    x = torch.randn(batch, n)
    _train_step(layer, x)  # warm-up (workspaces, allocator)
    benchmark.pedantic(_train_step, args=(layer, x), rounds=10, iterations=1, warmup_rounds=2)
    _stamp(benchmark, provider=provider, **CPU_CASE, dtype="fp32", nnzb=int(mask[::b, ::b].sum()))


def _plastic_step(layer: bs.SparseConnectomeLinear, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    """The module path with every biological feature on: noisy forward, backward, optimiser step,
    Dale projection, then the Hebbian + homeostatic update (what ``BioNIC`` does per layer)."""
    opt.zero_grad(set_to_none=True)
    layer(x).square().mean().backward()
    opt.step()
    layer.constrain_()
    layer.plasticity_step(eta=1e-3, oja=1.0, target_rate=0.1, homeo_rate=0.01)


def test_cpu_plastic_step_4096_b64_90pct(benchmark):
    """``SparseConnectomeLinear`` with Dale signs, synaptic noise and plasticity, 4096 x 4096, b = 64,
    90 % block sparsity, batch 256, fp32: one full training step through the module."""
    torch.manual_seed(0)
    n, b, sparsity, batch = CPU_CASE.values()
    mask = _block_mask(n, b, sparsity)
    sign = torch.where(torch.rand(n) < 0.8, 1.0, -2.0)
    layer = bs.SparseConnectomeLinear(n, n, mask=mask, block_size=b, sign=sign, noise_sigma=0.1).train()
    layer.record_activity = True
    opt = torch.optim.SGD(layer.parameters(), lr=1e-3)
    x = torch.randn(batch, n)
    _plastic_step(layer, opt, x)
    benchmark.pedantic(_plastic_step, args=(layer, opt, x), rounds=10, iterations=1, warmup_rounds=2)
    _stamp(benchmark, provider="sparse-module", **CPU_CASE, dtype="fp32", noise_sigma=0.1, plasticity=True)


@pytest.mark.parametrize("method", ["blockT", "dense"])
@pytest.mark.parametrize("b,sparsity", [(16, 0.9), (16, 0.5), (32, 0.5)], ids=["b16-90", "b16-50", "b32-50"])
def test_cpu_dispatch(benchmark, monkeypatch, method, b, sparsity):
    """Re-measures the CPU crossover that ``bionic_sparse.backends.cpu.cpu_method`` encodes."""
    monkeypatch.setenv("BIONIC_SPARSE_BACKEND", method)
    torch.manual_seed(0)
    n, batch = 2048, 128
    mask = _block_mask(n, b, sparsity)
    layer = bs.SparseConnectomeLinear(n, n, mask=mask, block_size=b)
    x = torch.randn(batch, n)
    _train_step(layer, x)
    benchmark.pedantic(_train_step, args=(layer, x), rounds=5, iterations=1, warmup_rounds=1)
    _stamp(benchmark, method=method, n=n, b=b, sparsity=sparsity, batch=batch, dtype="fp32")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("provider", ["triton", "dense_masked", "torch_bsr"])
@pytest.mark.parametrize(
    "n,b,sparsity,batch,dtype",
    [(4096, 64, 0.9, 4096, "bf16"), (16384, 64, 0.9, 4096, "bf16")],
    ids=["4096-b64-90-M4096-bf16", "16384-b64-90-M4096-bf16"],
)
def test_gpu_training_step(benchmark, provider, n, b, sparsity, batch, dtype):
    from triton.testing import do_bench

    from .gpu_bench import DTYPES, make_step, random_block_matrix, step_flops

    m = random_block_matrix(n, b, sparsity, "cuda")
    step = make_step(provider, m, batch, DTYPES[dtype])
    step()
    ms = do_bench(step, warmup=25, rep=100, return_mode="median")
    benchmark.pedantic(lambda: (step(), torch.cuda.synchronize()), rounds=20, iterations=1, warmup_rounds=3)
    _stamp(
        benchmark,
        provider=provider,
        n=n,
        b=b,
        sparsity=sparsity,
        batch=batch,
        dtype=dtype,
        do_bench_median_ms=ms,
        tflops_nonzero=step_flops(m, batch) / ms / 1e9,
        gpu=torch.cuda.get_device_name(0),
    )


def test_block_sparse_matrix_build_speed(benchmark):
    """Index building is vectorised: 16384 x 16384, b = 32, 10 % block density (26k blocks)."""
    g = torch.Generator().manual_seed(0)
    block_mask = torch.rand(512, 512, generator=g) < 0.1
    benchmark(BlockSparseMatrix.from_block_mask, block_mask, 32)
