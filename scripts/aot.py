"""Ahead-of-time compilation of every kernel for real GPU targets, without a GPU.

``compile_variant`` builds one kernel specialisation with ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", cc, 32))`` and reads the registers and spills from the ``ptxas`` that
ships with Triton and the shared memory from the compiled metadata. Used by
``tests/test_aot_compile.py`` and ``scripts/aot_compile.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from bionic_sparse.triton_kernels.bsr_linear import (
    _bsr_linear_bwd_dx_kernel,
    _bsr_linear_fwd_kernel,
    _bsr_materialize_kernel,
)
from bionic_sparse.triton_kernels.bsr_sdd import _bsr_linear_bwd_dw_kernel, _bsr_plasticity_kernel
from bionic_sparse.triton_kernels.csr_linear import (
    BK_DEFAULT,
    _csr_linear_bwd_dw_kernel,
    _csr_linear_bwd_dx_kernel,
    _csr_linear_fwd_kernel,
    _csr_plasticity_kernel,
)

# Shared memory per block available to a kernel (opt-in maximum), bytes.
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}

_PTR = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}
_INT_ARGS = {
    "M",
    "N",
    "K",
    "seed",
    "chunk",
    "M_BUCKET",
    "stride_xm",
    "stride_xk",
    "stride_ym",
    "stride_yn",
    "stride_dym",
    "stride_dyn",
    "stride_dxm",
    "stride_dxk",
    "stride_pm",
    "stride_pn",
}
_FLOAT_ARGS = {"sigma", "eta", "oja", "inv_batch"}
_INDEX_ARGS = {"crow", "col", "row", "row_order", "ccol_t", "row_t", "perm_t", "col_order"}
_F32_ARGS = {"moments", "post_bias", "post_sq", "scale", "sign", "corr"}
_ACT_ARGS = {"x", "y", "dy", "dx", "post", "out"}

KERNELS = {
    "fwd": _bsr_linear_fwd_kernel,
    "dx": _bsr_linear_bwd_dx_kernel,
    "sdd": _bsr_linear_bwd_dw_kernel,
    "materialize": _bsr_materialize_kernel,
    "plasticity": _bsr_plasticity_kernel,
    # element storage (block size 1): no tensor-core tiles, gathers and tl.sum
    "csr_fwd": _csr_linear_fwd_kernel,
    "csr_dx": _csr_linear_bwd_dx_kernel,
    "csr_dw": _csr_linear_bwd_dw_kernel,
    "csr_plasticity": _csr_plasticity_kernel,
}


@dataclass
class CompileReport:
    kernel: str
    cc: int
    dtype: str
    block_size: int
    config: str
    registers: int
    spill_bytes: int
    shared_bytes: int
    uses_wgmma: bool
    uses_mma: bool

    @property
    def ok(self) -> bool:
        return self.spill_bytes == 0 and self.shared_bytes <= SMEM_LIMIT[self.cc]


def _signature(name: str, jit, dtype: str, block_size: int, bm: int, features: bool, split: int = 1):
    """Types for each argument and the constexpr values (optional inputs present iff ``features``)."""
    sig, consts = {}, {}
    flags = {
        "HAS_MASK": features,
        "HAS_SIGN": features,
        "HAS_NOISE": features,
        "HAS_STATS": features,
        "HAS_POST_BIAS": features,
        "HAS_GRAD": True,
        "HAS_CORR": features,
        "HAS_SCALE": features,
    }
    optional = {
        "synapse_mask": "HAS_MASK",
        "sign": "HAS_SIGN",
        "moments": "HAS_STATS",
        "post_bias": "HAS_POST_BIAS",
        "post": "HAS_CORR",
        "corr": "HAS_CORR",
        "scale": "HAS_SCALE",
    }
    for arg in jit.arg_names:
        if arg in flags:
            sig[arg], consts[arg] = "constexpr", flags[arg]
        elif arg in optional and optional[arg] in jit.arg_names and not flags[optional[arg]]:
            # (an input is optional only where the kernel has its flag: the plasticity kernels need corr)
            sig[arg], consts[arg] = "constexpr", None
        elif arg == "BS":
            sig[arg], consts[arg] = "constexpr", block_size
        elif arg == "BM":
            sig[arg], consts[arg] = "constexpr", bm
        elif arg == "BK":
            sig[arg], consts[arg] = "constexpr", BK_DEFAULT
        elif arg == "MULTIPLICATIVE":
            sig[arg], consts[arg] = "constexpr", True
        elif arg == "PRECISION":
            sig[arg], consts[arg] = "constexpr", "tf32" if dtype == "fp32" else "ieee"
        elif arg == "SPLIT":
            sig[arg], consts[arg] = "constexpr", split
        elif arg in _INT_ARGS:
            sig[arg] = "i32"
        elif arg in _FLOAT_ARGS:
            sig[arg] = "fp32"
        elif arg in _INDEX_ARGS:
            sig[arg] = "*i32"
        elif arg == "synapse_mask":
            sig[arg] = "*u8"
        elif arg in _F32_ARGS or arg in ("values", "dw"):
            sig[arg] = "*fp32"  # fp32 masters
        elif arg in _ACT_ARGS:
            sig[arg] = _PTR[dtype]
        else:
            raise KeyError(f"no AOT type for argument {arg!r} of {name}")
    if name == "materialize":
        sig["out"] = _PTR[dtype]
    return sig, consts


def _ptxas_resources(ptx: str, cc: int) -> tuple[int, int]:
    """(registers, spill-store bytes) as ``ptxas -v`` (shipped with Triton) reports them.

    ``cuobjdump -res-usage`` only shows the stack frame, which libdevice's slow paths
    (``cos`` of large arguments in Box-Muller) use without any register spilling.
    """
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    arch = f"sm_{cc}a" if cc >= 90 else f"sm_{cc}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        res = subprocess.run(
            [tool, "-v", "--gpu-name", arch, path, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True,
            text=True,
            check=True,
        )
    info = res.stderr + res.stdout
    regs = int(re.search(r"Used (\d+) registers", info).group(1))
    spill = int(re.search(r"(\d+) bytes spill stores", info).group(1))
    return regs, spill


def compile_variant(
    name: str,
    cc: int,
    dtype: str,
    block_size: int,
    bm: int = 64,
    num_warps: int = 4,
    num_stages: int = 3,
    features: bool = True,
    split: int = 1,
) -> CompileReport:
    jit = KERNELS[name].fn
    sig, consts = _signature(name, jit, dtype, block_size, bm, features, split)
    src = ASTSource(fn=jit, signature=sig, constexprs=consts)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=options)
    ptx = compiled.asm["ptx"]
    regs, spill = _ptxas_resources(ptx, cc)
    return CompileReport(
        kernel=name,
        cc=cc,
        dtype=dtype,
        block_size=block_size,
        config=f"BM={bm},warps={num_warps},stages={num_stages},features={features},split={split}",
        registers=regs,
        spill_bytes=spill,
        shared_bytes=int(compiled.metadata.shared),
        uses_wgmma="wgmma" in ptx,
        uses_mma="mma.sync" in ptx or "wgmma" in ptx,
    )
