"""Print a markdown table from a gpu_bench.py result file: ``python benchmarks/summarize.py FILE``."""

from __future__ import annotations

import json
import sys


def fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def both(row: dict, p: str) -> str:
    return f"{fmt(row.get(p + '_ms'), '.3f')} ({fmt(row.get(p + '_graph_ms'), '.3f')})"


def main(*paths: str) -> None:
    r = None
    for path in paths:  # several --part files merge into one table
        with open(path) as f:
            part = json.load(f)
        if r is None:
            r = part
        else:
            r["training_step"] += part["training_step"]
            r["forward"] += part.get("forward", [])
    print(
        f"Device: {r['device']} (sm {r['capability']}), torch {r['torch']}, triton {r['triton']}, "
        f"CUDA {r['cuda']}, {r['date']}; dense cuBLAS 8192^3: "
        + ", ".join(f"{k} {v:.0f} TFLOP/s" for k, v in r["dense_cublas_tflops"].items())
    )
    print()
    print("Eager step (Python launches included); in brackets: CUDA-graph replay of the same step.")
    print()
    print(
        "| n | b | sparsity | batch | dtype | triton ms | dense ms | torch_bsr ms | x dense | x torch_bsr "
        "| TFLOP/s nonzero | frac. of dense rate |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in r["training_step"]:
        if "error" in row:
            print(f"| {row.get('case')} | error: {row['error'][-80:]} |")
            continue
        print(
            f"| {row['n']} | {row['block_size']} | {row['sparsity']:.2f} | {row['batch']} | {row['dtype']} "
            f"| {both(row, 'triton')} | {both(row, 'dense_masked')} | {both(row, 'torch_bsr')} "
            f"| {fmt(row.get('speedup_vs_dense_masked'))} ({fmt(row.get('graph_speedup_vs_dense_masked'))}) "
            f"| {fmt(row.get('speedup_vs_torch_bsr'))} ({fmt(row.get('graph_speedup_vs_torch_bsr'))}) "
            f"| {fmt(row.get('triton_tflops_nonzero'), '.1f')} "
            f"| {fmt(row.get('fraction_of_dense_cublas_rate'))} |"
        )
    if r.get("forward"):
        print()
        print("| forward only: n | b | sparsity | batch | dtype | ms | TFLOP/s nonzero | frac. of dense rate |")
        print("|---|---|---|---|---|---|---|---|")
        for row in r["forward"]:
            if "error" in row:
                print(f"| error: {row['error'][-80:]} |")
                continue
            print(
                f"| {row['n']} | {row['block_size']} | {row['sparsity']} | {row['batch']} | {row['dtype']} "
                f"| {row['fwd_ms']:.3f} | {row['fwd_tflops_nonzero']:.1f} "
                f"| {row['fwd_fraction_of_dense_cublas_rate']:.2f} |"
            )


if __name__ == "__main__":
    main(*sys.argv[1:])
