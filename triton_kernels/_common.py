"""Helpers shared by the kernel launchers: interpreter detection, dtype maps, config factory."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Tests set this to fill every freshly allocated output with NaN, so that an output a kernel
# never writes (a row with no blocks, a ragged edge) shows up as a failure.
POISON = False

# NOTE: b = 128 spills hundreds of bytes in every config on sm_80 and sm_90 (AOT sweep,
# 2026-11-22), so the kernels stop at 64.
GPU_BLOCK_SIZES = (16, 32, 64)

# Dtypes the kernels accept for activations; weights may be fp32 masters for any of them.
ACT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def check_index(name: str, t: torch.Tensor, n: int | None = None) -> None:
    check(t.dtype == torch.int32, f"{name} must be int32, got {t.dtype}")
    check(t.dim() == 1 and t.is_contiguous(), f"{name} must be a contiguous 1-D tensor")
    if n is not None:
        check(t.numel() == n, f"{name} must have {n} entries, got {t.numel()}")


def check_post_stats(post_bias: torch.Tensor | None, post_moments: torch.Tensor | None, n_out: int) -> None:
    """Check the forward's optional ``post_bias[n_out]`` and ``post_moments`` (fp32 ``[2, n_out]``,
    zeroed here: the kernels add into it)."""
    check(post_bias is None or post_bias.shape == (n_out,), f"post_bias must have shape ({n_out},)")
    if post_moments is not None:
        check(
            post_moments.shape == (2, n_out) and post_moments.dtype == torch.float32 and post_moments.is_contiguous(),
            f"post_moments must be a contiguous float32 [2, {n_out}] tensor",
        )
        post_moments.zero_()


def check_values(values: torch.Tensor) -> int:
    check(
        values.dim() == 3 and values.shape[1] == values.shape[2],
        f"values must be [nnzb, b, b], got {tuple(values.shape)}",
    )
    check(values.is_contiguous(), "values must be contiguous")
    check(values.dtype in ACT_DTYPES, f"values must be fp32/fp16/bf16, got {values.dtype}")
    b = values.shape[-1]
    check(b in GPU_BLOCK_SIZES, f"block size must be one of {GPU_BLOCK_SIZES} (a power of two >= 16), got {b}")
    check(values.numel() < 2**31, "global synapse ids must fit int32 (nnzb * b * b < 2**31)")
    return b


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The one allocator for kernel outputs (NaN-poisoned when ``POISON`` is set)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if POISON and dtype.is_floating_point:
        out.fill_(float("nan"))
    return out


def flat2d(t: torch.Tensor, name: str) -> torch.Tensor:
    check(t.dtype in ACT_DTYPES, f"{name} must be fp32/fp16/bf16, got {t.dtype}")
    return t.reshape(-1, t.shape[-1])


def mask_u8(synapse_mask: torch.Tensor | None, values: torch.Tensor) -> torch.Tensor | None:
    if synapse_mask is None:
        return None
    check(synapse_mask.shape == values.shape, "synapse_mask must match values' shape")
    return synapse_mask.contiguous().view(torch.uint8)


def input_precision(dtype: torch.dtype) -> str:
    """fp32 dots follow torch's TF32 switch (ieee by default, as ``torch.mm``); exact in the interpreter."""
    if dtype == torch.float32 and not INTERPRET and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def m_bucket(m: int) -> int:
    """Autotune key for the batch: a power-of-two bucket, never the raw size."""
    return min(triton.next_power_of_2(max(m, 16)), 8192)


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


_order_cache: dict[tuple, torch.Tensor] = {}


def longest_first(ptr: torch.Tensor) -> torch.Tensor:
    """Segment order by length, longest first (load balance: long rows start first).

    Memoised per index tensor: topologies are long-lived buffers, and the argsort costs several
    launches per call. A stale entry after an index tensor is freed and its memory reused is
    still a permutation of the same length, so it can only change the launch order, never the
    result.
    """
    key = (ptr.data_ptr(), ptr.numel(), ptr.device, ptr._version)
    order = _order_cache.get(key)
    if order is None:
        if len(_order_cache) > 256:
            _order_cache.clear()
        order = torch.argsort(ptr[1:] - ptr[:-1], descending=True, stable=True).to(torch.int32)
        _order_cache[key] = order
    return order


def autotune_enabled() -> bool:
    """``BIONIC_SPARSE_AUTOTUNE=0`` runs the default config (first of the list) without tuning."""
    return os.environ.get("BIONIC_SPARSE_AUTOTUNE", "1") != "0"


def matmul_configs(kernel: str, block_size: int, dtype: torch.dtype) -> list[triton.Config]:
    """Autotune space for one kernel, block size and activation dtype; the first is the default.

    Pruned by ``scripts/aot_compile.py`` (sm_80 and sm_90, every optional input on): BM = 32
    spills a few bytes on sm_80 in fwd/dx, b = 64 needs 8 warps (the fp32 W tile plus in-kernel
    Philox state spill with 4), fp32 at b = 64 spills at BM = 128 on sm_80, and the SDD kernel's
    three streamed tiles spill at b = 64 beyond BM = 64, and in fp32 beyond BM = 32 (16-52 bytes at
    b = 32 with 4 warps once the Hebbian tile adds the bias of ``post``, AOT sweep 2026-11-23).
    """
    fp32 = dtype == torch.float32
    sdd_bms = [32] if fp32 else [64, 32]
    bms = sdd_bms if kernel == "sdd" else ([64] if (fp32 and block_size >= 64) else [64, 128])
    warps = (4, 8) if block_size <= 32 else (8,)
    stages = (3, 4)
    default_warps = 8 if block_size >= 64 else 4
    configs = [triton.Config({"BM": bm}, num_warps=w, num_stages=st) for bm in bms for w in warps for st in stages]
    configs.sort(key=lambda c: (c.kwargs["BM"] != bms[0], c.num_warps != default_warps, c.num_stages != stages[0]))
    return configs


def interpreter_config() -> dict:
    return {"BM": 16, "num_warps": 4, "num_stages": 1}


@triton.jit
def noisy_weight(b_w, i_blk, o_r, o_c, seed, sigma, BS: tl.constexpr, MULTIPLICATIVE: tl.constexpr):
    """``W * (1 + sigma xi)`` or ``W + sigma xi`` with ``xi = randn(seed, global synapse id)``."""
    offs = i_blk * (BS * BS) + o_r[:, None] * BS + o_c[None, :]
    xi = tl.randn(seed, offs)
    if MULTIPLICATIVE:
        return b_w * (1.0 + sigma * xi)
    return b_w + sigma * xi


_tuned: dict[tuple, object] = {}


def launch(kernel, name: str, grid, block_size: int, dtype: torch.dtype, key: list[str], reset=None, **kwargs) -> None:
    """Launch ``kernel`` on ``grid(meta)``: a tiny fixed config under the interpreter, the
    default config when autotuning is off, else the autotuned kernel for (name, b, dtype).

    ``reset`` names outputs that are accumulated atomically (zeroed before each tuning run)."""
    if INTERPRET:
        cfg = interpreter_config()
        kernel[grid(cfg)](**kwargs, BM=cfg["BM"], num_warps=cfg["num_warps"])
        return
    configs = matmul_configs(name, block_size, dtype)
    if not autotune_enabled():
        c = configs[0]
        kernel[grid(c.kwargs)](**kwargs, **c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
        return
    cache_key = (name, block_size, dtype, tuple(reset or ()))
    tuned = _tuned.get(cache_key)
    if tuned is None:
        tuned = _tuned[cache_key] = triton.autotune(configs=configs, key=key, reset_to_zero=reset)(kernel)
    tuned[grid](**kwargs)
