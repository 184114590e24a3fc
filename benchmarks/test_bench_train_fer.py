"""Training throughput (images/s) of BioNIC on the sparse engine vs dense masked execution vs the
conventional baseline: one optimiser step (forward, backward, AdamW, Dale projection, plasticity)
on a batch of 48x48 images with the default model configuration.

    pytest benchmarks/test_bench_train_fer.py -m "not gpu" --benchmark-json out.json   # CPU
    pytest benchmarks/test_bench_train_fer.py -m gpu --benchmark-json out.json         # GPU
"""

from __future__ import annotations

import pytest
import torch

from bionic_sparse.models import BioNIC, BioNICConfig, ConventionalBaseline

VARIANTS = {
    "bionic-sparse": lambda: BioNIC(BioNICConfig()),
    "bionic-dense_masked": lambda: BioNIC(BioNICConfig(execution="dense_masked")),
    "baseline": lambda: ConventionalBaseline(BioNICConfig()),
}


def _run(benchmark, variant: str, device: str, batch: int, rounds: int) -> None:
    torch.manual_seed(0)
    model = VARIANTS[variant]().to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, 48, 48, device=device)
    y = torch.randint(0, 7, (batch,), device=device)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.after_optimizer_step()
        if device == "cuda":
            torch.cuda.synchronize()

    step()
    step()
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        variant=variant,
        device=torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        batch=batch,
        images_per_s=batch / median,
        parameters=sum(p.numel() for p in model.parameters()),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        seed=0,
    )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cpu_train_step_images_per_s(benchmark, variant):
    _run(benchmark, variant, "cpu", batch=64, rounds=3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gpu_train_step_images_per_s(benchmark, variant):
    _run(benchmark, variant, "cuda", batch=256, rounds=20)
