"""The compiled helpers of the CPU path, built on first use with the system C compiler.

Today one function: the Philox4x32-10 generator of :mod:`bionic_sparse.noise`
(``csrc/philox.c``), about 7x faster than the numpy version and bit-identical to it. The shared
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

__all__ = ["philox_uniforms", "build_error", "cache_dir", "ENV_CACHE", "ENV_CC"]

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


def _build(source: Path) -> Path:
    """Compile ``source`` into the cache (atomically: concurrent processes may race) and return it."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError(f"no C compiler found (set {ENV_CC} or install cc/gcc/clang)")
    text = source.read_bytes()
    tag = hashlib.sha256(text + " ".join([cc, *_FLAGS, *_FAST_FLAGS, platform.machine()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"{source.stem}-{platform.machine()}-{tag}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        for extra in (_FAST_FLAGS, []):
            proc = subprocess.run([cc, *_FLAGS, *extra, str(source), "-o", tmp], capture_output=True, text=True)
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


def _load(name: str, source: Path, configure: Callable[[ctypes.CDLL], object]) -> object | None:
    with _lock:
        if name not in _loaded:
            try:
                _loaded[name] = configure(ctypes.CDLL(str(_build(source))))
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


def build_error() -> str | None:
    """Why the compiled generator is unavailable (``None`` when it loaded or was not tried)."""
    return _loaded.get("philox:error")


def reset() -> None:
    """Forget what was loaded (tests: rebuild under other settings)."""
    with _lock:
        _loaded.clear()
