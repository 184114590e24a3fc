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

from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

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


# Chunks small enough that the ~8 live uint64 arrays of a chunk stay in L2, large enough that
# numpy's per-call overhead is negligible; chunks run on threads (numpy releases the GIL).
_CHUNK = 1 << 16


def _philox_chunk(seed: int, offset: np.ndarray, n_rounds: int, out: list[np.ndarray]) -> None:
    """Philox4x32 of ``offset`` (uint64 view of int32 ids) written into ``out`` (uint32 words)."""
    n = offset.shape[0]
    mask, a, b, s32 = np.uint64(_MASK32), np.uint64(_ROUND_A), np.uint64(_ROUND_B), np.uint64(32)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    c0 = offset & mask
    c1, c2, c3 = np.zeros(n, np.uint64), np.zeros(n, np.uint64), np.zeros(n, np.uint64)
    p_a, p_b = np.empty(n, np.uint64), np.empty(n, np.uint64)
    for _ in range(n_rounds):
        # in place: c0' = hi(B c2) ^ c1 ^ k0, c1' = lo(B c2), c2' = hi(A c0) ^ c3 ^ k1, c3' = lo(A c0)
        np.multiply(c2, b, out=p_b)
        np.multiply(c0, a, out=p_a)
        np.right_shift(p_b, s32, out=c0)
        np.bitwise_xor(c0, c1, out=c0)
        np.bitwise_xor(c0, np.uint64(k0), out=c0)
        np.bitwise_and(p_b, mask, out=c1)
        np.right_shift(p_a, s32, out=c2)
        np.bitwise_xor(c2, c3, out=c2)
        np.bitwise_xor(c2, np.uint64(k1), out=c2)
        np.bitwise_and(p_a, mask, out=c3)
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    for dst, word in zip(out, (c0, c1, c2, c3), strict=False):
        dst[:] = word  # < 2**32: the uint32 cast is exact


def _philox4x32_numpy(seed: int, offset: np.ndarray, n_rounds: int, n_words: int = 4) -> list[np.ndarray]:
    """The first ``n_words`` Philox words of each offset as uint32 arrays.

    NOTE: uint64 products of two uint32 are exact, which makes numpy 5x faster than the
    split-multiply torch version; chunking in cache and two threads give another 3x
    (1.27M ids: 25 ms vs 120 ms on a 2-core AMD EPYC).
    """
    offset = np.ascontiguousarray(offset).astype(np.uint64)
    n = offset.shape[0]
    words = [np.empty(n, np.uint32) for _ in range(n_words)]

    def work(start: int) -> None:
        stop = min(n, start + _CHUNK)
        _philox_chunk(seed, offset[start:stop], n_rounds, [w[start:stop] for w in words])

    starts = range(0, n, _CHUNK)
    if len(starts) <= 1 or torch.get_num_threads() <= 1:
        for start in starts:
            work(start)
    else:
        list(_pool().map(work, starts))
    return words


_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """One pool for the process (the generator runs several times per training step)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max(1, torch.get_num_threads()), thread_name_prefix="philox")
    return _executor


def philox4x32(seed: int, offset: torch.Tensor, n_rounds: int = 10) -> tuple[torch.Tensor, ...]:
    """Philox4x32 of counter ``(offset, 0, 0, 0)`` under ``seed``: four uint32 words as int64."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    if offset.device.type == "cpu":
        words = _philox4x32_numpy(seed, offset.reshape(-1).numpy(), n_rounds)
        return tuple(torch.from_numpy(w.astype(np.int64)).view(offset.shape) for w in words)
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


def _int32_to_uniform(signed: torch.Tensor) -> torch.Tensor:
    """Uniform in [0, 1) from a word reinterpreted as int32 (held in int32 or int64)."""
    signed = torch.where(signed < 0, -signed - 1, signed)  # ~v for a negative int32
    return signed.to(torch.float32) * torch.tensor(_UNIFORM_SCALE, dtype=torch.float32)


def synapse_randn(seed: int, offset: torch.Tensor) -> torch.Tensor:
    """Standard normal float32 noise for int32 ``offset`` (any shape), as ``tl.randn`` draws it."""
    if offset.device.type == "cpu":
        seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        w0, w1 = _philox4x32_numpy(seed, offset.reshape(-1).numpy(), 10, n_words=2)
        s0 = torch.from_numpy(w0.view(np.int32)).view(offset.shape)
        s1 = torch.from_numpy(w1.view(np.int32)).view(offset.shape)
    else:
        w0, w1, _, _ = _philox4x32_torch(int(seed) & 0xFFFFFFFFFFFFFFFF, offset, 10)
        s0 = torch.where(w0 >= 2**31, w0 - 2**32, w0)
        s1 = torch.where(w1 >= 2**31, w1 - 2**32, w1)
    u1 = torch.clamp_min(_int32_to_uniform(s0), 1.0e-7)
    u2 = _int32_to_uniform(s1)
    theta = torch.tensor(6.283185307179586, dtype=torch.float32) * u2
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(theta)


# A small LRU memo of recent noise tensors: the forward pass of every layer of a network runs
# before any backward pass, so one entry per layer is needed for the backward to hit.
_MEMO_ENTRIES = 8
_MEMO_BYTES = 256 * 2**20
_recent_noise: OrderedDict[tuple, torch.Tensor] = OrderedDict()


def synapse_noise(seed: int, nnzb: int, block_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Noise ``xi[nnzb, b, b]`` (float32) of every entry of every block, by global synapse id.

    Recent results are memoised (up to 8 entries / 256 MiB, least recently used dropped): the
    forward pass, the input gradient and the weight gradient of one step ask for the same
    ``(seed, nnzb, b)`` for every layer, and on CPU the generator costs ~30 ms per 1.27M synapses
    (2-core AMD EPYC). It is still a pure function of its arguments: the memo only saves recomputing
    it within a step, as the seed changes every step. Do not modify the returned tensor in place.
    """
    n = nnzb * block_size * block_size
    if n >= 2**31:
        raise ValueError(f"global synapse ids must fit int32; nnzb * b * b = {n}")
    key = (int(seed), nnzb, block_size, torch.device(device))
    cached = _recent_noise.get(key)
    if cached is not None:
        _recent_noise.move_to_end(key)
        return cached
    offset = torch.arange(n, dtype=torch.int64, device=device)
    noise = synapse_randn(seed, offset).view(nnzb, block_size, block_size)
    _recent_noise[key] = noise
    while len(_recent_noise) > 1 and (
        len(_recent_noise) > _MEMO_ENTRIES or sum(t.numel() * 4 for t in _recent_noise.values()) > _MEMO_BYTES
    ):
        _recent_noise.popitem(last=False)
    return noise
