"""Where training runs: the device, its CPU threads, float types, autocast, and how much memory it has.

``resolve_device("auto")`` picks CUDA, then MPS, then the CPU. :func:`set_threads`
gives torch only the cores no other job is busy on: eager PyTorch spreads every
operator over all its threads, and when another process holds one of their
cores each operator waits for it (measured: training 2.2x slower beside a busy
loop, 30-40x beside an evaluation job).
Nothing here runs on import.
"""
from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Optional

import torch

from vae.choices import check_choice
from vae.errors import ArgumentError

__all__ = [
    "available", "resolve_device", "THREAD_ENV", "usable_cores", "busy_cores", "auto_threads", "set_threads",
    "accumulator_dtype", "native_bf16", "check_amp", "amp_supported", "autocast", "device_memory",
]

def available(kind: str) -> bool:
    """Whether this machine has a device of type ``kind`` (``cpu``, ``cuda``, ``mps``)."""
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    return kind == "cpu"


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must be available."""
    check_choice("device", name)
    if name == "auto":
        return torch.device("cuda" if available("cuda") else "mps" if available("mps") else "cpu")
    if not available(name):
        raise ArgumentError("device", f"{name}: {name.upper()} is not available on this machine (try cpu)")
    return torch.device(name)


THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Environment variables that fix the thread count: where one is set, ``threads 0`` (auto) leaves torch's as it is."""

BUSY_SAMPLE_S = 0.1  # how long :func:`busy_cores` watches the machine


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def busy_cores(seconds: float = BUSY_SAMPLE_S) -> Optional[float]:
    """Cores' worth of CPU time other processes used over the next ``seconds`` (``/proc/stat``); None if unknown.

    Falls back to the 1-minute load average where there is no ``/proc/stat`` (macOS); None on Windows.
    """
    def sample():
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]  # the "cpu" line: jiffies by state
        # all CPUs' jiffies, their idle + iowait ones, this process's CPU seconds, the wall clock
        return sum(fields[:8]), fields[3] + fields[4], time.process_time(), time.perf_counter()
    try:
        total0, idle0, own0, wall0 = sample()
        time.sleep(seconds)
        total1, idle1, own1, wall1 = sample()
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    ticks = os.sysconf("SC_CLK_TCK")
    busy = ((total1 - idle1) - (total0 - idle0)) / ticks - (own1 - own0)  # CPU-seconds, ours excluded
    return max(0.0, busy / (wall1 - wall0))


def auto_threads() -> tuple[int, str]:
    """The thread count of ``threads 0``, and why: the usable cores less the busy ones, at least 1."""
    cores, busy = usable_cores(), busy_cores()
    if busy is None:
        return cores, f"{cores} usable cores"
    free = max(1, min(cores, cores - int(busy + 0.5)))
    return free, f"{cores} usable cores, {busy:.1f} busy with other work"


def set_threads(requested: int = 0) -> str:
    """Give torch ``requested`` CPU threads, or (0) choose: returns a line saying how many and why.

    0 (auto) keeps torch's count where an environment variable of :data:`THREAD_ENV` sets it (so
    ``OMP_NUM_THREADS=1`` and torchrun's default still rule), else takes :func:`auto_threads`.
    """
    if requested < 0:
        raise ArgumentError("threads", f"must be a non-negative integer, got {requested}")
    if requested:
        why = "as asked"
    else:
        named = next((name for name in THREAD_ENV if os.environ.get(name)), None)
        if named:
            return f"{torch.get_num_threads()} CPU threads (from {named})"
        requested, why = auto_threads()
    torch.set_num_threads(requested)
    return f"{requested} CPU threads ({why})"


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 for running sums of losses, except on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


_BF16_FLAGS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("bf16", "Arm BF16"))  # /proc/cpuinfo


@functools.lru_cache(maxsize=None)
def native_bf16() -> Optional[str]:
    """The CPU's native bf16 instructions (``"AMX"``, ``"AVX512-BF16"``, ``"Arm BF16"``), or None.

    Read from the flags of ``/proc/cpuinfo`` (Linux); None where they cannot be read. Without them
    bf16 is emulated and its matmuls run slower than float32's.
    """
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = set()
            for line in cpuinfo:
                if line.lower().startswith(("flags", "features")):
                    flags.update(line.split(":", 1)[1].split())
    except OSError:
        return None
    return next((name for flag, name in _BF16_FLAGS if flag in flags), None)


def check_amp(device: torch.device, amp: bool) -> str:
    """The run's precision as one line; refuse ``amp`` where bf16 would not pay.

    Raises:
        ArgumentError: ``amp`` on MPS, or on a CPU without native bf16 instructions, where emulated bf16
            matmuls are slower than float32 ones and the numbers change for nothing.
    """
    if not amp:
        return "precision: float32"
    if device.type == "cpu":
        native = native_bf16()
        if native is None:
            raise ArgumentError("amp", "this CPU has no native bf16 instructions (AMX or AVX512-BF16), where bf16 "
                                       "is emulated and slower than float32; train without it (--no-amp)")
        where = f"{native} on the CPU"
    elif device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        raise ArgumentError("amp", f"bf16 autocast runs on CUDA and on CPUs with native bf16, not on {device.type}; "
                                   "train without it (--no-amp)")
    return f"precision: bf16 autocast for the networks ({where}); covariance maths, KL and likelihood in float32"


def amp_supported(device: torch.device) -> bool:
    """Whether ``--amp`` runs on ``device``: :func:`check_amp` would not refuse it."""
    try:
        check_amp(device, True)
    except ArgumentError:
        return False
    return True


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA or the CPU when ``enabled`` (see :func:`check_amp`); a no-op otherwise."""
    if enabled and device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def device_memory(device: torch.device) -> Optional[int]:
    """Total memory of ``device`` in bytes: the GPU's own for CUDA, else the RAM; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): no check
        return None
