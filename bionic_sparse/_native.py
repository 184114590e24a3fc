"""The compiled helpers of the CPU path, built on first use with the system C compiler.

The Philox4x32-10 generator of :mod:`bionic_sparse.noise` (``csrc/philox.c``), about 7x faster
than the numpy version and bit-identical to it, and the element-level CSR products of
:mod:`bionic_sparse.synapse_csr` (``csrc/synapse_csr.c``). The shared
library is compiled once per source version into ``$BIONIC_SPARSE_CACHE`` (default
``~/.cache/bionic_sparse``) and loaded with ``ctypes``; no Python headers are needed. On a
machine without a C compiler (or when the build fails) :func:`philox_uniforms` returns ``None``
and the pure numpy generator runs instead; :func:`build_error` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["philox_uniforms", "csr_kernels", "CsrKernels", "build_error", "cache_dir", "ENV_CACHE", "ENV_CC"]

ENV_CACHE = "BIONIC_SPARSE_CACHE"
ENV_CC = "BIONIC_SPARSE_CC"  # the compiler to use; empty: look for cc, gcc, clang on PATH
_SOURCE = Path(__file__).with_name("csrc") / "philox.c"
# -ffp-contract=off: no fused multiply-add may change the rounding of the two float32 multiplies
_FLAGS = ["-O3", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math"]
# tried first: per-CPU clones (x86-64 with a recent gcc or clang); then the portable build
_FAST_FLAGS = ["-DBIONIC_TARGET_CLONES", "-mprefer-vector-width=512"]

_lock = threading.Lock()
_loaded: dict[str, object] = {}


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "bionic_sparse")


def _compiler() -> str | None:
    if ENV_CC in os.environ:
        cc = os.environ[ENV_CC]
        return shutil.which(cc) if cc else None
    for cc in ("cc", "gcc", "clang"):
        found = shutil.which(cc)
        if found:
            return found
    return None


def _build(source: Path, flags: list[str] | None = None, tries: list[list[str]] | None = None) -> Path:
    """Compile ``source`` into the cache (atomically: concurrent processes may race) and return it.
    ``flags`` (default the Philox flags) always apply; the ``tries`` are added in turn until one
    builds (default: the per-CPU clones, then nothing)."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError(f"no C compiler found (set {ENV_CC} or install cc/gcc/clang)")
    flags = _FLAGS if flags is None else flags
    tries = [_FAST_FLAGS, []] if tries is None else tries
    text = source.read_bytes()
    spec = " ".join([cc, *flags, *(f for t in tries for f in t), platform.machine()])
    tag = hashlib.sha256(text + spec.encode()).hexdigest()[:16]
    target = cache_dir() / f"{source.stem}-{platform.machine()}-{tag}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        for extra in tries:
            proc = subprocess.run([cc, *flags, *extra, str(source), "-o", tmp], capture_output=True, text=True)
            if proc.returncode == 0:
                break
        else:
            last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
            raise RuntimeError(f"{cc} failed: {last}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load(
    name: str,
    source: Path,
    configure: Callable[[ctypes.CDLL], object],
    flags: list[str] | None = None,
    tries: list[list[str]] | None = None,
) -> object | None:
    with _lock:
        if name not in _loaded:
            try:
                _loaded[name] = configure(ctypes.CDLL(str(_build(source, flags, tries))))
            except Exception as e:  # no compiler, read-only cache, a failed build: use the fallback
                _loaded[name] = None
                _loaded[f"{name}:error"] = f"{type(e).__name__}: {e}"
        return _loaded[name]


def _configure_philox(lib: ctypes.CDLL):
    fn = lib.bionic_philox_uniforms
    fn.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    fn.restype = None
    return fn


def philox_uniforms() -> Callable[[int, int, int, int, int], None] | None:
    """``fn(seed, offset_ptr, n, u1_ptr, theta_ptr)`` (int64 offsets in, float32 out), or ``None``."""
    return _load("philox", _SOURCE, _configure_philox)


_CSR_SOURCE = Path(__file__).with_name("csrc") / "synapse_csr.c"
# fused multiply-adds allowed here (no bitwise contract); OpenMP threads where the compiler has them
_CSR_FLAGS = ["-O3", "-shared", "-fPIC", "-fno-fast-math", "-fopenmp-simd"]
_CSR_TRIES = [["-fopenmp", *_FAST_FLAGS], ["-fopenmp"], _FAST_FLAGS, []]


class CsrKernels:
    """The element-level CSR products of ``csrc/synapse_csr.c`` (see its header for the maths)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        i64, p, i = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
        self.fwd = lib.bionic_csr_fwd
        self.fwd.argtypes = [i64, i64, p, p, p, p, p, i]
        self.fwd.restype = None
        self.fwd_t = lib.bionic_csr_fwd_t
        self.fwd_t.argtypes = [i64, i64, i64, p, p, p, p, p, i]
        self.fwd_t.restype = ctypes.c_int
        self.sddmm = lib.bionic_csr_sddmm
        self.sddmm.argtypes = [i64, i64, p, p, p, p, p, p, p, p, p, ctypes.c_float, i]
        self.sddmm.restype = None
        self.plasticity = lib.bionic_csr_plasticity
        self.plasticity.argtypes = [i64, p, p, p, p, p, ctypes.c_float, ctypes.c_float, i]
        self.plasticity.restype = None
        self.transpose = lib.bionic_transpose
        self.transpose.argtypes = [i64, i64, p, p, p, p, i]
        self.transpose.restype = None


def csr_kernels() -> CsrKernels | None:
    """The compiled element-level CSR products, or ``None`` (no compiler, failed build: see
    :func:`build_error` with ``"csr"``)."""
    return _load("csr", _CSR_SOURCE, CsrKernels, _CSR_FLAGS, _CSR_TRIES)


def build_error(name: str = "philox") -> str | None:
    """Why a compiled helper is unavailable (``None`` when it loaded or was not tried)."""
    return _loaded.get(f"{name}:error")


def reset() -> None:
    """Forget what was loaded (tests: rebuild under other settings)."""
    with _lock:
        _loaded.clear()
