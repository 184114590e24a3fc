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

import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from . import _native

__all__ = ["philox4x32", "synapse_randn", "synapse_noise", "synapse_noise_at", "generator_impl", "ENV_NOISE"]

ENV_NOISE = "BIONIC_SPARSE_NOISE"
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

    _in_chunks(work, n, _CHUNK)
    return words


def _in_chunks(work, n: int, chunk: int) -> None:
    """``work(start)`` for every chunk of ``[0, n)``, on the thread pool when torch may use threads."""
    starts = range(0, n, chunk)
    if len(starts) <= 1 or torch.get_num_threads() <= 1:
        for start in starts:
            work(start)
    else:
        list(_pool().map(work, starts))


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


def _box_muller(u1: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``sqrt(-2 log u1) * cos(theta)`` in float32, in place in ``u1`` (consumed) and ``theta``.

    NOTE: torch's ops in the order of the first version, so the bits are unchanged (torch's float32
    log, sqrt and cos are not correctly rounded: its sqrt alone differs from the correctly rounded
    one in ~14 % of values); in place this runs at ~200 M normals per CPU-second on the 2-core CI machine."""
    return u1.log_().mul_(-2.0).sqrt_().mul_(theta.cos_())


def _uniforms_numpy(seed: int, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u1, theta)`` float32 ``[n]`` of flat int ``offset`` with the numpy Philox (no compiler)."""
    w0, w1 = _philox4x32_numpy(seed, offset.numpy(), 10, n_words=2)
    u1 = torch.clamp_min(_int32_to_uniform(torch.from_numpy(w0.view(np.int32))), 1.0e-7)
    u2 = _int32_to_uniform(torch.from_numpy(w1.view(np.int32)))
    return u1, torch.tensor(6.283185307179586, dtype=torch.float32) * u2


def _uniforms_native(seed: int, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same as :func:`_uniforms_numpy` with the compiled Philox (:mod:`bionic_sparse._native`);
    large inputs are split over the thread pool (ctypes releases the GIL during the call)."""
    fn = _native.philox_uniforms()
    offset = offset.to(torch.int64).contiguous()
    n = offset.numel()
    u1, theta = torch.empty(n, dtype=torch.float32), torch.empty(n, dtype=torch.float32)

    def work(start: int) -> None:
        m = min(n, start + _NATIVE_CHUNK) - start
        fn(seed, offset.data_ptr() + 8 * start, m, u1.data_ptr() + 4 * start, theta.data_ptr() + 4 * start)

    _in_chunks(work, n, _NATIVE_CHUNK)
    return u1, theta


# chunks of the compiled generator handed to the thread pool (~2 ms of work each at one thread)
_NATIVE_CHUNK = 1 << 18


def _randn_range_native(seed: int, n: int) -> torch.Tensor:
    """``synapse_randn(seed, arange(n))`` bit for bit, one cache-sized chunk at a time: the ids,
    the uniforms and Box-Muller of a chunk stay in L2 instead of six passes over ``n`` floats
    and an int64 ``arange(n)`` (436 MB and ~0.7 s per draw at the whole volume's 54.5 M synapses).

    NOTE: every chunk but the last is a multiple of the vector width, so torch's elementwise
    kernels take the same vector/scalar split of the elements as over the whole array."""
    fn = _native.philox_uniforms()
    out = torch.empty(n, dtype=torch.float32)

    def work(start: int) -> None:
        m = min(n, start + _NATIVE_CHUNK) - start
        offset = torch.arange(start, start + m, dtype=torch.int64)
        u1, theta = out[start : start + m], torch.empty(m, dtype=torch.float32)
        fn(seed, offset.data_ptr(), m, u1.data_ptr(), theta.data_ptr())
        _box_muller(u1, theta)

    _in_chunks(work, n, _NATIVE_CHUNK)
    return out


def generator_impl() -> str:
    """``"native"`` (compiled Philox, see :mod:`bionic_sparse._native`) or ``"numpy"`` (the
    fallback on a machine without a C compiler); ``BIONIC_SPARSE_NOISE=numpy|native`` forces one.
    Both give the same bits."""
    forced = os.environ.get(ENV_NOISE, "")
    if forced == "numpy":
        return "numpy"
    if forced not in ("", "native"):
        raise ValueError(f"{ENV_NOISE} must be 'native' or 'numpy', got {forced!r}")
    if _native.philox_uniforms() is not None:
        return "native"
    if forced == "native":
        raise RuntimeError(f"{ENV_NOISE}=native but the compiled generator is unavailable: {_native.build_error()}")
    return "numpy"


def synapse_randn(seed: int, offset: torch.Tensor) -> torch.Tensor:
    """Standard normal float32 noise for int32 ``offset`` (any shape), as ``tl.randn`` draws it."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    if offset.device.type == "cpu":
        flat = offset.reshape(-1)
        uniforms = _uniforms_native if generator_impl() == "native" else _uniforms_numpy
        return _box_muller(*uniforms(seed, flat)).view(offset.shape)
    w0, w1, _, _ = _philox4x32_torch(seed, offset, 10)
    s0 = torch.where(w0 >= 2**31, w0 - 2**32, w0)
    s1 = torch.where(w1 >= 2**31, w1 - 2**32, w1)
    u1 = torch.clamp_min(_int32_to_uniform(s0), 1.0e-7)
    theta = torch.tensor(6.283185307179586, dtype=torch.float32) * _int32_to_uniform(s1)
    return _box_muller(u1, theta)


# A small LRU memo of recent noise tensors: the forward pass of every layer of a network runs
# before any backward pass, so one entry per layer (per call: a recurrent model calls one layer T
# times with T seeds) is needed for the backward to hit. 1 GiB holds the 3 steps of the whole
# volume (218 MB each at 54.5 M synapses); with 256 MiB their backward drew 2 of them again.
_MEMO_ENTRIES = 8
_MEMO_BYTES = int(os.environ.get("BIONIC_SPARSE_NOISE_MEMO_MB", "1024")) * 2**20
_recent_noise: OrderedDict[tuple, tuple[torch.Tensor | None, torch.Tensor]] = OrderedDict()


def _memoised(key: tuple, ids: torch.Tensor | None, make) -> torch.Tensor:
    """The memo entry of ``key`` (for ``ids``, when given: the same tensor object), else ``make()``."""
    cached = _recent_noise.get(key)
    if cached is not None and cached[0] is ids:
        _recent_noise.move_to_end(key)
        return cached[1]
    noise = make()
    _recent_noise[key] = (ids, noise)
    _recent_noise.move_to_end(key)
    while len(_recent_noise) > 1 and (
        len(_recent_noise) > _MEMO_ENTRIES or sum(t.numel() * 4 for _, t in _recent_noise.values()) > _MEMO_BYTES
    ):
        _recent_noise.popitem(last=False)
    return noise


def _check_ids(n: int) -> None:
    if n >= 2**31:
        raise ValueError(f"global synapse ids must fit int32; nnzb * b * b = {n}")


def synapse_noise(seed: int, nnzb: int, block_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Noise ``xi[nnzb, b, b]`` (float32) of every entry of every block, by global synapse id.

    Recent results are memoised (up to 8 entries / 1 GiB, ``BIONIC_SPARSE_NOISE_MEMO_MB``; least
    recently used dropped): the forward pass, the input gradient and the weight gradient of one
    step ask for the same ``(seed, nnzb, b)`` for every layer call. It is still a pure function of
    its arguments: the memo only saves recomputing it within a step, as the seed changes every
    step. Do not modify the returned tensor in place. :func:`synapse_noise_at` draws the same
    numbers at chosen ids only.
    """
    n = nnzb * block_size * block_size
    _check_ids(n)
    key = (int(seed), nnzb, block_size, torch.device(device))

    def make() -> torch.Tensor:
        if torch.device(device).type == "cpu" and generator_impl() == "native":
            return _randn_range_native(int(seed) & 0xFFFFFFFFFFFFFFFF, n).view(nnzb, block_size, block_size)
        offset = torch.arange(n, dtype=torch.int64, device=device)
        return synapse_randn(seed, offset).view(nnzb, block_size, block_size)

    return _memoised(key, None, make)


def synapse_noise_at(seed: int, ids: torch.Tensor) -> torch.Tensor:
    """Noise ``xi[n]`` (float32) of the synapses with global ids ``ids[n]`` (int64, ``k b b + i b + j``):
    ``synapse_noise(seed, nnzb, b).view(-1)[ids]`` bit for bit, without drawing the other slots.

    NOTE: in the CPU configuration of BioNIC (b = 16, 4 units per neuron) only ~10 % of the stored
    slots are synapses, so this draws a tenth of the numbers. Memoised like :func:`synapse_noise`,
    keyed on the ``ids`` tensor object itself (a layer's cached synapse ids), so do not modify
    ``ids`` or the result in place.
    """
    key = (int(seed), "ids", id(ids), ids.numel(), ids.device)

    def make() -> torch.Tensor:
        if ids.numel():
            _check_ids(int(ids.max()) + 1)
        return synapse_randn(seed, ids)

    return _memoised(key, ids, make)
