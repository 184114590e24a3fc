"""Compile every kernel and every autotune config for sm_80 and sm_90 without a GPU.

Fails (exit 1) on a compile error, a register spill, shared memory over the target's limit, or a
16-bit matmul kernel that does not use ``wgmma`` on sm_90. Writes one JSON row per variant.

    python scripts/aot_compile.py [--out report.json] [--jobs 2] [--block-sizes 16,32,64]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)  # real compilation, not the interpreter

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bionic_sparse.triton_kernels._common import matmul_configs  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MATMUL_KERNELS = ("fwd", "dx", "sdd")
CSR_KERNELS = ("csr_fwd", "csr_dx", "csr_dw", "csr_plasticity")


def variants(block_sizes: list[int]) -> list[dict]:
    out = []
    for cc in (80, 90):
        for b in block_sizes:
            for dt in ("bf16", "fp32", "fp16"):
                for kernel in MATMUL_KERNELS:
                    configs = matmul_configs(kernel, b, DTYPES[dt])
                    if dt == "fp16":
                        configs = configs[:1]  # same tiles as bf16; the default config suffices
                    for c in configs:
                        base = dict(
                            name=kernel,
                            cc=cc,
                            dtype=dt,
                            block_size=b,
                            bm=c.kwargs["BM"],
                            num_warps=c.num_warps,
                            num_stages=c.num_stages,
                        )
                        out.append(dict(base, features=True))
                        if c is configs[0]:
                            out.append(dict(base, features=False))
                            if kernel == "sdd":
                                out.append(dict(base, features=True, split=2))
            for kernel in ("materialize", "plasticity"):
                out.append(dict(name=kernel, cc=cc, dtype="bf16", block_size=b, num_warps=8 if b >= 64 else 4))
        for dt in ("bf16", "fp32"):  # element storage: one config (BM=64, BK=64, 4 warps)
            for kernel in CSR_KERNELS:
                for features in (True, False):
                    out.append(dict(name=kernel, cc=cc, dtype=dt, block_size=1, bm=64, num_warps=4, features=features))
    return out


def _one(v: dict) -> dict:
    from aot import SMEM_LIMIT, compile_variant

    try:
        r = compile_variant(**v)
    except Exception as e:  # a compile error is a result, reported below
        return dict(v, error=f"{type(e).__name__}: {str(e)[:400]}", ok=False)
    row = dict(dataclasses.asdict(r), ok=r.ok, smem_limit=SMEM_LIMIT[r.cc])
    # wgmma works on 64-row tiles per warpgroup: the dot's M is BM in fwd/dx and b in the SDD.
    dot_m = v["block_size"] if v["name"] == "sdd" else v.get("bm", 0)
    row["wgmma_expected"] = v["name"] in MATMUL_KERNELS and v["cc"] >= 90 and v["dtype"] != "fp32" and dot_m >= 64
    if row["wgmma_expected"] and not r.uses_wgmma:
        row.update(ok=False, error="16-bit dot did not lower to wgmma on sm_90")
    if v["name"] in MATMUL_KERNELS and not r.uses_mma:
        row.update(ok=False, error="no tensor-core instruction in the PTX")
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--block-sizes", default="16,32,64")
    args = ap.parse_args(argv)
    todo = variants([int(b) for b in args.block_sizes.split(",")])
    rows = []
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    with cf.ProcessPoolExecutor(args.jobs) as pool:
        it = pool.map(_one, todo)
        for row in tqdm(it, total=len(todo), desc="aot compile", file=sys.stderr) if tqdm else it:
            rows.append(row)
    bad = [r for r in rows if not r["ok"]]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    for r in bad:
        print("FAILED", json.dumps(r))
    print(f"{len(rows) - len(bad)} passed, {len(bad)} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
