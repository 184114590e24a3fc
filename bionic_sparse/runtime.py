"""The process a run lives in: CPU threads, the OpenMP wait policy, and what a result depends on.

Threads. Two training processes on two cores, each with two OpenMP threads that spin while they
wait (the GNU OpenMP default), collapse (a BioNIC step 12x slower than one process alone, as
reported in the CPU-speed issue); with ``OMP_WAIT_POLICY=PASSIVE`` and one thread per process, two
jobs together train 1.44x the images/s of one job with both threads (measured:
``benchmarks/test_bench_cpu_training.py``, case d).
OpenMP reads the policy when torch loads, so it has to be in the environment before the process
starts: :func:`child_env` gives the environment of a job that shares the machine with ``jobs - 1``
others (``cores / jobs`` threads, passive waiting), and :func:`reexec_with_passive_wait` restarts
a command-line program with the passive policy when nobody chose one. A setting the user made in
the environment (``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY``) always wins.

Provenance. :func:`environment` records what changes the numbers of a run besides its config and
data: the code revision, the library versions, the CPU instruction set torch's kernels use
(``torch.backends.cpu.get_cpu_capability()``; ``ATEN_CPU_CAPABILITY=avx2`` forces AVX2), the
oneDNN and MKL versions and the thread count.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import subprocess
import sys

import torch

__all__ = [
    "child_env",
    "reexec_with_passive_wait",
    "invocation",
    "environment",
    "code_revision",
    "cpu_name",
    "CpuShare",
    "ENV_REEXEC",
]

ENV_REEXEC = "BIONIC_SPARSE_NO_REEXEC"  # set to 1 to keep the inherited OpenMP wait policy
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env(jobs: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one of ``jobs`` processes that share this machine's CPU cores.

    ``OMP_NUM_THREADS`` = ``cores // jobs`` (at least 1) and ``OMP_WAIT_POLICY=PASSIVE``, unless
    ``base`` (default ``os.environ``) already sets them: the user's explicit choice wins.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    env = dict(os.environ if base is None else base)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def reexec_with_passive_wait() -> None:
    """Restart this program (same interpreter, same arguments) with ``OMP_WAIT_POLICY=PASSIVE``
    when the environment sets no wait policy, so that it never spin-waits against another process.

    Call it first thing in a command-line entry point; it returns without doing anything when a
    policy is set, when ``BIONIC_SPARSE_NO_REEXEC=1``, or when the original command line is unknown.
    """
    if "OMP_WAIT_POLICY" in os.environ or os.environ.get(ENV_REEXEC) == "1":
        return
    argv = getattr(sys, "orig_argv", None)
    if not argv or not sys.executable:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *argv[1:]])


class CpuShare:
    """How much of the machine's CPU other processes used while a piece of work ran (Linux:
    ``/proc/stat``): start it, do the work, read :meth:`others`. A timing taken while other
    processes held the cores measures the sharing, not the code; this says when that happened."""

    def __init__(self) -> None:
        self._start = self._now()

    @staticmethod
    def _busy_seconds() -> float | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    def _now(self) -> tuple[float | None, float, float]:
        import time

        return self._busy_seconds(), time.process_time(), time.perf_counter()

    def others(self) -> float | None:
        """The fraction of all cores' time (0 to 1) that other processes used since the start;
        ``None`` where ``/proc/stat`` cannot be read."""
        busy0, own0, wall0 = self._start
        busy1, own1, wall1 = self._now()
        if busy0 is None or busy1 is None or wall1 <= wall0:
            return None
        others = (busy1 - busy0) - (own1 - own0)
        return min(1.0, max(0.0, others / ((wall1 - wall0) * (os.cpu_count() or 1))))


def invocation(argv0: str, module: str) -> str:
    """The start of a command that runs this program again, pasteable into a shell: the console
    script by name (when it is the one on ``PATH``) or by path, ``<interpreter> <script.py>``, or
    ``<interpreter> -m <module>``; the interpreter is the one running now, quoted."""
    python = shlex.quote(sys.executable or "python3")
    if not argv0 or argv0.endswith("__main__.py") or argv0 == "-m" or _started_as_module():
        return f"{python} -m {module}"
    if argv0.endswith(".py"):
        return f"{python} {shlex.quote(argv0)}"
    name = os.path.basename(argv0)
    on_path = shutil.which(name)
    if on_path and os.path.realpath(on_path) == os.path.realpath(argv0):
        return shlex.quote(name)
    return shlex.quote(os.path.abspath(argv0))


def _started_as_module() -> bool:
    """``python [options] -m pkg.mod``: then ``sys.argv[0]`` is the module's file, not a script."""
    for arg in getattr(sys, "orig_argv", [])[1:]:
        if arg == "-m":
            return True
        if not arg.startswith("-"):
            return False
    return False


def code_revision() -> str:
    """``git:<commit>`` (``+dirty`` with uncommitted changes) of the checkout this package was
    imported from, else ``bionic-sparse <version>`` (an installed wheel has no git history)."""
    from . import __version__

    try:
        top = subprocess.run(
            ["git", "-C", _PACKAGE_ROOT, "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=10
        )
        if top.returncode == 0 and os.path.realpath(top.stdout.strip()) == os.path.realpath(_PACKAGE_ROOT):
            sha = subprocess.run(["git", "-C", _PACKAGE_ROOT, "rev-parse", "HEAD"], capture_output=True, text=True)
            dirty = subprocess.run(
                ["git", "-C", _PACKAGE_ROOT, "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
            )
            if sha.returncode == 0:
                return f"git:{sha.stdout.strip()}" + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return f"bionic-sparse {__version__}"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def _library_versions() -> dict[str, str | None]:
    config = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version ([^\s]+)", config)
    onednn = re.search(r"(?:MKL-DNN|oneDNN) (v[\d.]+)", config)
    return {"mkl": mkl.group(1) if mkl else None, "onednn": onednn.group(1) if onednn else None}


def environment() -> dict:
    """What a result depends on besides its config and data (written into every ``results.json``)."""
    from . import __version__
    from .noise import generator_impl

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    import numpy

    return {
        "code_revision": code_revision(),
        "bionic_sparse": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "triton": triton_version,
        **_library_versions(),
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "noise_generator": generator_impl(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
