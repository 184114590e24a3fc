"""GPU benchmark grid for one training step of a block-sparse connectome layer, on the path users run.

Providers, each doing forward + input gradient + weight gradient + Hebbian update with noise:

* ``triton``: ``SparseConnectomeLinear`` with synaptic noise and ``record_activity`` (the module
  path): forward (noise in-kernel or materialised, activity statistics fused), ``backward()``
  (input gradient over the transposed index; weight gradient and Hebbian correlation in one pass),
  then ``plasticity_step`` (one elementwise pass over the weights);
* ``dense_masked``: what people write without this library: ``F.linear(x, W_noisy * M)`` with
  autograd, then the Hebbian product ``(y^T x) * M`` added to the weights;
* ``torch_bsr``: ``torch.sparse._triton_ops.bsr_dense_mm`` for forward and input gradient (a BSR
  copy of ``W^T`` built per step), ``sampled_addmm`` for weight gradient and Hebbian, noise as a
  separate elementwise op (a hand-assembled sequence: torch has no autograd for it).

Reports the median time (``triton.testing.do_bench``), TFLOP/s on the nonzero work
(``4 * nnz * M`` FLOPs for fwd+dx+dW, plus ``2 * nnz * M`` for the Hebbian product) and the ratio
to dense cuBLAS. The per-kernel breakdown (``ms_*`` keys) is kernel-only: each launcher timed on
its own, outside the module. Run: ``python benchmarks/gpu_bench.py --out results.json [--quick]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import traceback

import torch
import triton
from triton.testing import do_bench

import bionic_sparse as bs
from bionic_sparse import BlockSparseMatrix
from bionic_sparse.triton_kernels.bsr_linear import bsr_linear_dx, bsr_linear_fwd, materialize
from bionic_sparse.triton_kernels.bsr_sdd import bsr_linear_dw, bsr_plasticity_

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
ETA = 1e-3


def random_block_matrix(n: int, b: int, sparsity: float, device, seed: int = 0) -> BlockSparseMatrix:
    g = torch.Generator().manual_seed(seed)
    R = n // b
    block_mask = torch.rand(R, R, generator=g) >= sparsity
    m = BlockSparseMatrix.from_block_mask(block_mask, b)
    m.values = torch.randn(m.nnzb, b, b, generator=g) * (1.0 / math.sqrt(max(1, m.nnzb * b / R)))
    return m.to(device)


def make_step(provider: str, m: BlockSparseMatrix, batch: int, dtype: torch.dtype, sigma: float = 0.1):
    """One training step of ``provider`` on a ``[batch, n]`` activation in ``dtype`` (fp32 weights)."""
    n = m.shape[0]
    dev = m.values.device
    x = torch.randn(batch, n, device=dev, dtype=dtype)
    dy = torch.randn(batch, n, device=dev, dtype=dtype)
    if provider == "triton":
        layer = bs.SparseConnectomeLinear(n, n, mask=m, block_size=m.block_size, noise_sigma=sigma, device=dev).train()
        with torch.no_grad():
            layer.values.copy_(m.values)
        layer.record_activity = True

        def step():
            layer.values.grad = layer.bias.grad = None
            layer(x).backward(dy)
            layer.plasticity_step(eta=ETA, homeo_rate=0.01)

        return step
    if provider == "dense_masked":
        lin = torch.nn.Linear(n, n, device=dev)
        with torch.no_grad():
            lin.weight.copy_(m.to_dense())
        mask = m.to_dense_mask().float()

        def step():
            lin.weight.grad = lin.bias.grad = None
            w_eff = (lin.weight * (1 + sigma * torch.randn_like(lin.weight)) * mask).to(dtype)
            y = torch.nn.functional.linear(x, w_eff, lin.bias.to(dtype))
            y.backward(dy)
            with torch.no_grad():
                lin.weight.add_((y.T @ x).float() * mask, alpha=ETA / batch)

        return step
    if provider == "torch_bsr":
        from torch.sparse._triton_ops import bsr_dense_mm, sampled_addmm

        vals = m.values.to(dtype)
        crow, col = m.crow.long(), m.col.long()
        perm = m.perm_t.long()
        ccol, row_t = m.ccol_t.long(), m.row_t.long()

        def step():
            noisy = vals * (1 + sigma * torch.randn_like(vals))
            w_bsr = torch.sparse_bsr_tensor(crow, col, noisy, size=(n, n))
            y = bsr_dense_mm(w_bsr, x.T).T
            wt_bsr = torch.sparse_bsr_tensor(ccol, row_t, noisy[perm].transpose(1, 2), size=(n, n))
            bsr_dense_mm(wt_bsr, dy.T)
            pattern = torch.sparse_bsr_tensor(crow, col, torch.zeros_like(vals), size=(n, n))
            sampled_addmm(pattern, dy.T.contiguous(), x, beta=0.0)
            sampled_addmm(pattern, y.T.contiguous(), x, beta=0.0)

        return step
    raise ValueError(provider)


def kernel_breakdown(m: BlockSparseMatrix, batch: int, dtype: torch.dtype, sigma: float = 0.1) -> dict:
    """Kernel-only: median ms of each launcher of the triton step on its own."""
    n, b = m.shape[0], m.block_size
    x = torch.randn(batch, n, device="cuda", dtype=dtype)
    dy = torch.randn_like(x)
    w = materialize(m.values, None, sigma, 1, True, dtype)
    fwd = dict(crow=m.crow, col=m.col, synapse_mask=None, sign=None, n_out=n)
    noise = dict(sigma=sigma, seed=1, multiplicative=True)
    y = bsr_linear_fwd(x=x, values=w, **fwd)
    moments = torch.zeros(2, n, device="cuda")
    corr = torch.zeros_like(m.values)
    values = m.values.clone()
    transposed = dict(ccol_t=m.ccol_t, row_t=m.row_t, perm_t=m.perm_t, synapse_mask=None, sign=None, n_in=n)
    coo = dict(row=m.row, col=m.col, block_size=b, out_dtype=torch.float32, synapse_mask=None, sign=None)
    rule = dict(row=m.row, synapse_mask=None, post_sq=moments[1], scale=None, eta=1e-3, oja=1.0)
    parts = {
        "materialize": lambda: materialize(m.values, None, sigma, 1, True, dtype),
        "fwd": lambda: bsr_linear_fwd(x=x, values=w, **fwd),
        "fwd_fused_noise": lambda: bsr_linear_fwd(x=x, values=m.values, **fwd, **noise),
        "fwd_stats": lambda: bsr_linear_fwd(x=x, values=w, **fwd, post_moments=moments),
        "dx": lambda: bsr_linear_dx(dy=dy, values=w, **transposed),
        "dw": lambda: bsr_linear_dw(dy=dy, x=x, **coo, **noise),
        "dw_corr": lambda: bsr_linear_dw(dy=dy, x=x, **coo, **noise, post=y, corr=corr),
        "plasticity": lambda: bsr_plasticity_(values=values, corr=corr, **rule),
    }
    return {f"ms_{k}": do_bench(f, warmup=10, rep=50, return_mode="median") for k, f in parts.items()}


def graph_ms(step) -> float:
    """Median ms of one CUDA-graph replay of ``step``: the GPU time without Python launch gaps
    (at batch 256 the eager step is bound by ~0.1 ms of launcher overhead per kernel)."""
    step()
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return do_bench(graph.replay, warmup=10, rep=60, return_mode="median")


def step_flops(m: BlockSparseMatrix, batch: int) -> float:
    nnz = m.nnzb * m.block_size**2
    return 2.0 * nnz * batch * 4  # fwd, dx, dW, Hebbian


def run_case(n, b, sparsity, batch, dtype_name, providers, dense_tflops):
    dtype = DTYPES[dtype_name]
    m = random_block_matrix(n, b, sparsity, "cuda")
    flops = step_flops(m, batch)
    row = dict(n=n, block_size=b, sparsity=sparsity, batch=batch, dtype=dtype_name, nnzb=m.nnzb)
    for p in providers:
        try:
            step = make_step(p, m, batch, dtype)
            step()
            torch.cuda.synchronize()
            ms = do_bench(step, warmup=10, rep=60, return_mode="median")
            row[f"{p}_ms"] = ms
            row[f"{p}_tflops_nonzero"] = flops / ms / 1e9
        except Exception as e:  # record and go on: one broken provider must not lose the grid
            row[f"{p}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            continue
        try:
            row[f"{p}_graph_ms"] = graph_ms(step)
        except Exception as e:
            row[f"{p}_graph_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    if "triton" in providers:
        try:
            row.update(kernel_breakdown(m, batch, dtype))
        except Exception as e:
            row["breakdown_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    if "triton_ms" in row:
        for p in providers:
            if p != "triton" and f"{p}_ms" in row:
                row[f"speedup_vs_{p}"] = row[f"{p}_ms"] / row["triton_ms"]
                if f"{p}_graph_ms" in row and "triton_graph_ms" in row:
                    row[f"graph_speedup_vs_{p}"] = row[f"{p}_graph_ms"] / row["triton_graph_ms"]
        row["fraction_of_dense_cublas_rate"] = row["triton_tflops_nonzero"] / dense_tflops[dtype_name]
    return row


def forward_only(n, b, sparsity, batch, dtype_name, dense_tflops):
    """Kernel-only forward rate (the launcher on materialised weights, no noise)."""
    dtype = DTYPES[dtype_name]
    m = random_block_matrix(n, b, sparsity, "cuda")
    x = torch.randn(batch, n, device="cuda", dtype=dtype)
    vals = m.values.to(dtype)
    ms = do_bench(
        lambda: bsr_linear_fwd(x=x, values=vals, crow=m.crow, col=m.col, synapse_mask=None, sign=None, n_out=n),
        warmup=25,
        rep=100,
        return_mode="median",
    )
    tflops = 2.0 * m.nnzb * b * b * batch / ms / 1e9
    return dict(
        n=n,
        block_size=b,
        sparsity=sparsity,
        batch=batch,
        dtype=dtype_name,
        fwd_ms=ms,
        fwd_tflops_nonzero=tflops,
        fwd_fraction_of_dense_cublas_rate=tflops / dense_tflops[dtype_name],
    )


def dense_rate(dtype: torch.dtype, n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    bm = torch.randn(n, n, device="cuda", dtype=dtype)
    ms = do_bench(lambda: a @ bm, warmup=25, rep=100, return_mode="median")
    return 2 * n**3 / ms / 1e9


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="headline cases only")
    ap.add_argument("--full", action="store_true", help="the whole grid of the kernel issue (fp32 at every point too)")
    ap.add_argument("--part", default="0/1", help="run the i-th of k slices of the grid, as i/k")
    ap.add_argument("--providers", default="triton,dense_masked,torch_bsr")
    args = ap.parse_args(argv)
    providers = args.providers.split(",")
    props = torch.cuda.get_device_properties(0)
    dense_tflops = {k: dense_rate(v) for k, v in DTYPES.items()}
    result = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=props.name,
        sm_count=props.multi_processor_count,
        capability=f"{props.major}.{props.minor}",
        torch=torch.__version__,
        triton=triton.__version__,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        tf32=torch.backends.cuda.matmul.allow_tf32,
        dense_cublas_tflops=dense_tflops,
        seed=0,
        noise_sigma=0.1,
        timing="triton.testing.do_bench median, warmup 10 ms, rep 60 ms (kernel breakdown: 10/50)",
        training_step=[],
        forward=[],
    )
    if args.quick:
        grid = [
            (4096, 64, 0.9, 4096, "bf16"),
            (4096, 64, 0.9, 256, "bf16"),
            (4096, 32, 0.9, 4096, "bf16"),
            (16384, 64, 0.9, 4096, "bf16"),
            (4096, 64, 0.9, 4096, "fp32"),
        ]
    else:
        grid = [
            (n, b, s, bt, "bf16")
            for n in (4096, 16384)
            for b in (32, 64)
            for s in (0.8, 0.9, 0.95, 0.99)
            for bt in (256, 4096)
        ]
        grid += [(n, 64, s, 4096, "fp32") for n in (4096, 16384) for s in (0.9, 0.99)]
    if args.full:  # 64 cases: about two 10-minute device calls with --part 0/2 and 1/2
        grid = [
            (n, b, s, bt, dt)
            for dt in ("bf16", "fp32")
            for n in (4096, 16384)
            for b in (32, 64)
            for s in (0.8, 0.9, 0.95, 0.99)
            for bt in (256, 4096)
        ]
    part, parts = (int(v) for v in args.part.split("/"))
    grid = grid[part::parts]
    for case in grid:
        try:
            row = run_case(*case, providers, dense_tflops)
        except Exception:
            row = dict(case=case, error=traceback.format_exc()[-500:])
        result["training_step"].append(row)
        print(json.dumps(row), flush=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    fwd_cases = [(4096, 64, 0.9, 4096, "bf16"), (16384, 64, 0.9, 4096, "bf16"), (4096, 32, 0.9, 4096, "bf16")]
    for case in fwd_cases if part == 0 else []:
        try:
            row = forward_only(*case, dense_tflops)
        except Exception:
            row = dict(case=case, error=traceback.format_exc()[-500:])
        result["forward"].append(row)
        print(json.dumps(row), flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
