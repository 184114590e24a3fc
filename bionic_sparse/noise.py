"""Counter-based synaptic noise, bit-compatible with Triton's ``tl.randn(seed, offset)``.

The noise of synapse ``(k, i, j)`` (block ``k`` in row-major block order, row ``i`` and column
``j`` inside the block) is ``xi = randn(seed, offset)`` with the *global synapse id*
``offset = k * b * b + i * b + j`` (int32). It depends on nothing else (not the tiling, not the
batch, not the device), so the backward pass regenerates exactly the noise the forward pass used
and nothing is stored.

Algorithm (identical to ``triton/language/random.py`` of Triton 3.x with ``n_rounds = 10``):

1. Philox4x32-10 with counter ``(offset, 0, 0, 0)`` and key ``(seed & 0xffffffff, seed >> 32)``;
   each round ``c0' = mulhi(B, c2) ^ c1 ^ k0``, ``c2' = mulhi(A, c0) ^ c3 ^ k1``,
   ``c1' = lo(B * c2)``, ``c3' = lo(A * c0)``, then ``k0 += 0x9E3779B9``, ``k1 += 0xBB67AE85``
   with ``A = 0xD2511F53``, ``B = 0xCD9E8D57``.
2. Words ``c0, c1`` -> uniforms: reinterpret as int32 ``v``, ``v = ~v if v < 0``,
   ``u = float32(v) * 4.6566127342e-10``.
3. Box-Muller: ``u1 = max(u1, 1e-7)``, ``xi = sqrt(-2 log u1) * cos(2 pi u2)`` in float32.

Steps 1-2 are bit-exact on every backend; step 3 agrees to a few float32 ulps (the GPU uses its
own ``log``/``cos``).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["philox4x32", "synapse_randn", "synapse_noise"]

_MASK32 = 0xFFFFFFFF
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57
_UNIFORM_SCALE = 4.6566127342e-10


def _mul32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a * b`` (``a`` a uint32 constant, ``b`` uint32 in int64).

    The 64-bit product does not fit a signed int64, so ``a`` is split into 16-bit halves.
    """
    a_hi, a_lo = a >> 16, a & 0xFFFF
    p_hi = a_hi * b  # < 2**48
    p_lo = a_lo * b  # < 2**48
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = ((p_hi << 16) + p_lo) & _MASK32
    return hi, lo


def _philox4x32_numpy(seed: int, offset: np.ndarray, n_rounds: int) -> tuple[np.ndarray, ...]:
    # NOTE: uint64 products of two uint32 are exact, which makes this 5x faster than the
    # split-multiply torch version on CPU (0.17 s vs 0.91 s for 1.6M ids, 2-core Xeon).
    mask = np.uint64(_MASK32)
    k0, k1 = np.uint64(seed & _MASK32), np.uint64((seed >> 32) & _MASK32)
    c0 = offset.astype(np.uint64) & mask
    c1 = np.zeros_like(c0)
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    a, b, s32 = np.uint64(_ROUND_A), np.uint64(_ROUND_B), np.uint64(32)
    for _ in range(n_rounds):
        p_b, p_a = b * c2, a * c0
        c0, c1, c2, c3 = (p_b >> s32) ^ c1 ^ k0, p_b & mask, (p_a >> s32) ^ c3 ^ k1, p_a & mask
        k0 = (k0 + np.uint64(_KEY_A)) & mask
        k1 = (k1 + np.uint64(_KEY_B)) & mask
    return c0, c1, c2, c3


def philox4x32(seed: int, offset: torch.Tensor, n_rounds: int = 10) -> tuple[torch.Tensor, ...]:
    """Philox4x32 of counter ``(offset, 0, 0, 0)`` under ``seed``: four uint32 words as int64."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    if offset.device.type == "cpu":
        words = _philox4x32_numpy(seed, offset.numpy(), n_rounds)
        return tuple(torch.from_numpy(w.astype(np.int64)) for w in words)
    return _philox4x32_torch(seed, offset, n_rounds)


def _philox4x32_torch(seed: int, offset: torch.Tensor, n_rounds: int) -> tuple[torch.Tensor, ...]:
    """Same as the numpy version, in int64 torch ops (any device)."""
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    c0 = offset.to(torch.int64) & _MASK32
    c1 = torch.zeros_like(c0)
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(n_rounds):
        hi_b, lo_b = _mul32(_ROUND_B, c2)
        hi_a, lo_a = _mul32(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def _uint_to_uniform(word: torch.Tensor) -> torch.Tensor:
    signed = torch.where(word >= 2**31, word - 2**32, word)
    signed = torch.where(signed < 0, -signed - 1, signed)  # ~v for a negative int32
    return signed.to(torch.float32) * torch.tensor(_UNIFORM_SCALE, dtype=torch.float32)


def synapse_randn(seed: int, offset: torch.Tensor) -> torch.Tensor:
    """Standard normal float32 noise for int32 ``offset`` (any shape), as ``tl.randn`` draws it."""
    w0, w1, _, _ = philox4x32(seed, offset)
    u1 = torch.clamp_min(_uint_to_uniform(w0), 1.0e-7)
    u2 = _uint_to_uniform(w1)
    theta = torch.tensor(6.283185307179586, dtype=torch.float32) * u2
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(theta)


_last_noise: dict[tuple, torch.Tensor] = {}


def synapse_noise(seed: int, nnzb: int, block_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Noise ``xi[nnzb, b, b]`` (float32) of every entry of every block, by global synapse id.

    The result of the last call is memoised (one entry): the forward pass, the input gradient and
    the weight gradient of one step ask for the same ``(seed, nnzb, b)``, and on CPU the
    generator costs ~35 ms per 600k synapses (2-core Xeon). It is still a pure function of its arguments, so
    nothing is ever stored across steps. Do not modify the returned tensor in place.
    """
    n = nnzb * block_size * block_size
    if n >= 2**31:
        raise ValueError(f"global synapse ids must fit int32; nnzb * b * b = {n}")
    key = (int(seed), nnzb, block_size, torch.device(device))
    cached = _last_noise.get(key)
    if cached is not None:
        return cached
    offset = torch.arange(n, dtype=torch.int64, device=device)
    noise = synapse_randn(seed, offset).view(nnzb, block_size, block_size)
    _last_noise.clear()
    _last_noise[key] = noise
    return noise
