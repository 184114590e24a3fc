"""CPU training throughput on the path users run (issue: CPU training at the baseline's speed).

    pytest benchmarks/test_bench_cpu_training.py -m "not gpu" \
        --benchmark-json benchmarks/results/<date>-cpu-training.json

(a) one BioNIC and one conventional-baseline training step of ``Run.train_epoch`` at
    ``configs/fer-cpu.json`` (batch 64), timed alternately in one process at one thread;
(b) the synaptic-noise generator in normals per CPU-second (compiled and numpy Philox) against
    ``torch.randn``;
(c) one training step of a 4096 x 4096 ``SparseConnectomeLinear`` (90 % block sparsity, b = 64,
    batch 256) plain and with Dale signs, noise and plasticity, alternately, and dense masked
    ``F.linear`` beside them;
(d) two training processes at once with the ablation runner's thread settings against one alone
    using every core.

Each case records wall and CPU time (this machine is shared: CPU time at one thread is the stable
figure) and its ratios in ``extra_info``. The pytest-benchmark timing itself is of one round of
the whole alternating sequence.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import pytest
import torch

import bionic_sparse as bs
from bionic_sparse import noise
from bionic_sparse.runtime import child_env, environment

from .cpu_training import ROOT, make_run, time_epoch
from .test_bench_bsr_linear import CPU_CASE, _block_mask, _DenseMaskedLinear, _plastic_step, _train_step


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def test_cpu_train_step_bionic_vs_baseline(benchmark, tmp_path, one_thread):
    """(a) ``Run.train_epoch`` steps of BioNIC and the baseline, alternating, one thread."""
    batches, rounds = 8, 5
    runs = {m: make_run(m, batches, str(tmp_path / m)) for m in ("bionic", "baseline")}
    timings: dict[str, list[dict]] = {m: [] for m in runs}
    epoch = iter(range(10**6))
    for run in runs.values():
        time_epoch(run, 0)  # warm-up: allocator, caches, the compiled noise generator

    def alternate():
        e = next(epoch) + 1
        for m, run in runs.items():
            timings[m].append(time_epoch(run, e))

    benchmark.pedantic(alternate, rounds=rounds, iterations=1)
    info = {}
    for m, rows in timings.items():
        info[m] = {
            "step_cpu_ms": 1e3 * _median(rows, "cpu_s") / batches,
            "step_wall_ms": 1e3 * _median(rows, "wall_s") / batches,
            "images_per_cpu_s": batches * 64 / _median(rows, "cpu_s"),
            "parameters": sum(p.numel() for p in runs[m].model.parameters()),
        }
    info["ratio_cpu_bionic_over_baseline"] = info["bionic"]["step_cpu_ms"] / info["baseline"]["step_cpu_ms"]
    benchmark.extra_info.update(case="a", batch=64, batches_per_round=batches, config="configs/fer-cpu.json", **info)
    benchmark.extra_info["environment"] = environment()


@pytest.mark.parametrize("impl", ["native", "numpy", "torch.randn"])
def test_cpu_noise_generator_normals_per_s(benchmark, monkeypatch, impl, one_thread):
    """(b) normals per CPU-second of the synapse-id generator (bit-identical either way)."""
    n = 1 << 21
    offset = torch.arange(n, dtype=torch.int64)
    if impl == "torch.randn":
        fn = lambda: torch.randn(n)  # noqa: E731
    else:
        monkeypatch.setenv(noise.ENV_NOISE, impl)
        fn = lambda: noise.synapse_randn(12345, offset)  # noqa: E731
    fn()
    cpu = []

    def timed():
        c0 = time.process_time()
        fn()
        cpu.append(time.process_time() - c0)

    benchmark.pedantic(timed, rounds=7 if impl != "numpy" else 3, iterations=1)
    benchmark.extra_info.update(case="b", impl=impl, n=n, normals_per_cpu_s=n / statistics.median(cpu))
    benchmark.extra_info["environment"] = environment()


def _plain_step(layer: bs.SparseConnectomeLinear, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    """``_plastic_step`` without the biology: forward, backward, optimiser step, projection."""
    opt.zero_grad(set_to_none=True)
    layer(x).square().mean().backward()
    opt.step()
    layer.constrain_()


def test_cpu_module_step_4096_plain_vs_biology(benchmark, one_thread):
    """(c) 4096 x 4096, 90 %, b = 64, batch 256: the plain step, the step with signs + noise +
    plasticity, and dense masked ``F.linear``, alternating, one thread."""
    torch.manual_seed(0)
    n, b, sparsity, batch = CPU_CASE.values()
    mask = _block_mask(n, b, sparsity)
    plain = bs.SparseConnectomeLinear(n, n, mask=mask, block_size=b)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=1e-3)
    sign = torch.where(torch.rand(n) < 0.8, 1.0, -2.0)
    bio = bs.SparseConnectomeLinear(n, n, mask=mask, block_size=b, sign=sign, noise_sigma=0.1).train()
    bio.record_activity = True
    opt = torch.optim.SGD(bio.parameters(), lr=1e-3)
    dense = _DenseMaskedLinear(mask)
    x = torch.randn(batch, n)
    steps = {  # the same module path, without and with the biology (plasticity_step needs a record)
        "plain": lambda: _plain_step(plain, plain_opt, x),
        "biology": lambda: _plastic_step(bio, opt, x),
        "dense_masked": lambda: _train_step(dense, x),
    }
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    for f in steps.values():
        f()

    def alternate():
        for k, f in steps.items():
            c0 = time.process_time()
            f()
            cpu[k].append(time.process_time() - c0)

    benchmark.pedantic(alternate, rounds=7, iterations=1)
    ms = {k: 1e3 * statistics.median(v) for k, v in cpu.items()}
    benchmark.extra_info.update(
        case="c",
        **CPU_CASE,
        noise_sigma=0.1,
        cpu_ms=ms,
        ratio_biology_over_plain=ms["biology"] / ms["plain"],
        ratio_dense_masked_over_plain=ms["dense_masked"] / ms["plain"],
    )
    benchmark.extra_info["environment"] = environment()


def _workers(jobs: int, batches: int) -> list[dict]:
    env = {**child_env(jobs, {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}), "TQDM_DISABLE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "benchmarks.cpu_training", "--model", "bionic", "--batches", str(batches)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True) for _ in range(jobs)]
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=1200)
        assert p.returncode == 0, stdout
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_cpu_two_jobs_vs_one(benchmark):
    """(d) BioNIC training throughput: two processes at once with the runner's settings
    (``cores / 2`` threads each, passive waiting) against one process using every core."""
    batches = 12
    results = {}

    def both():
        results["one_job"] = _workers(1, batches)
        results["two_jobs"] = _workers(2, batches)

    benchmark.pedantic(both, rounds=1, iterations=1)
    one = results["one_job"][0]["images_per_s"]
    two = sum(r["images_per_s"] for r in results["two_jobs"])
    benchmark.extra_info.update(
        case="d",
        one_job=results["one_job"],
        two_jobs=results["two_jobs"],
        one_job_images_per_s=one,
        two_jobs_total_images_per_s=two,
        ratio_two_over_one=two / one,
    )
    benchmark.extra_info["environment"] = environment()


def test_cpu_train_step_eager_vs_compile(benchmark, tmp_path, one_thread):
    """(e) what ``--compile`` buys for a BioNIC step on the CPU (compilation in the warm-up epoch)."""
    import torch._dynamo

    torch._dynamo.reset()
    batches, rounds = 8, 5
    runs = {c: make_run("bionic", batches, str(tmp_path / c), compile=c == "compile") for c in ("eager", "compile")}
    timings: dict[str, list[dict]] = {c: [] for c in runs}
    warmup = {c: time_epoch(run, 0) for c, run in runs.items()}
    epoch = iter(range(10**6))

    def alternate():
        e = next(epoch) + 1
        for c, run in runs.items():
            timings[c].append(time_epoch(run, e))

    benchmark.pedantic(alternate, rounds=rounds, iterations=1)
    info = {c: {"step_cpu_ms": 1e3 * _median(rows, "cpu_s") / batches} for c, rows in timings.items()}
    info["compile_warmup_epoch_wall_s"] = warmup["compile"]["wall_s"]
    info["ratio_compile_over_eager"] = info["compile"]["step_cpu_ms"] / info["eager"]["step_cpu_ms"]
    benchmark.extra_info.update(case="e", batch=64, config="configs/fer-cpu.json", **info)
    benchmark.extra_info["environment"] = environment()
