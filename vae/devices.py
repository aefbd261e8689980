"""Where training runs: the device, its CPU threads, float types, autocast, and how much memory one step may take.

``resolve_device("auto")`` picks CUDA, then MPS, then the CPU. :func:`set_threads`
gives torch only the cores no other job is busy on: eager PyTorch spreads every
operator over all its threads, and when another process holds one of their
cores each operator waits for it (measured: training 2.2x slower beside a busy
loop, 30-40x beside an evaluation job). Before any data is loaded,
:func:`check_step_memory` refuses a ``--k`` and ``--batch-size`` whose training
step would need more than :data:`STEP_MEMORY_FRACTION` of the device's memory.
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
    "accumulator_dtype", "native_bf16", "check_amp", "amp_supported", "autocast", "STEP_MEMORY_FRACTION",
    "step_memory_bytes", "device_memory", "check_step_memory",
]

STEP_MEMORY_FRACTION = 0.25
"""One training step may need at most this share of the device's memory (the GPU's for CUDA, else the RAM)."""


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


def _step_memory_parts(config) -> tuple[int, int]:
    """``(fixed, per_image)`` bytes of one training step: ``fixed + batch_size * per_image`` is the estimate.

    Fixed: the parameters, their gradients and Adam's two moments, 4 float32 copies of every weight,
    the scale head's ``hidden[-1] x head`` included (head: D(D+1)/2 raw entries for the full family,
    D for the diagonal, D(R+1) for the low-rank). Per image: the encoder's activations and their
    gradients, the raw head, and 4 copies of the family's factor (the full family's (D, D) L, its
    gradient and the triangular solves' temporaries); and per draw (``k`` of them) float32 logits,
    their loss terms and gradients (3 x 784 values) and the decoder's activations and gradients
    (2 x the hidden widths): measured peaks on the CPU were 2,374 to 3,449 floats per draw for hidden
    16 to 500-500, against 2,390 to 4,544 here. The test set is not counted.
    """
    from vae.data import IMAGE_PIXELS  # here: loading a checkpoint needs this module, not torchvision
    from vae.model.posteriors import FAMILIES  # each family sizes its own raw head

    dim, hidden, rank = config.latent_dim, tuple(config.hidden), config.rank
    head = FAMILIES[config.posterior].head_size(dim, rank)
    factor = dim * dim if config.posterior == "full" else head  # the dense (D, D) L; the others hold their entries
    encoder = (IMAGE_PIXELS, *hidden)
    decoder = (dim, *reversed(hidden), IMAGE_PIXELS)
    params = sum((a + 1) * b for a, b in zip(encoder, encoder[1:])) + (hidden[-1] + 1) * (dim + head)
    params += sum((a + 1) * b for a, b in zip(decoder, decoder[1:]))
    per_draw = 3 * IMAGE_PIXELS + 2 * sum(hidden) + 3 * dim
    per_image = 2 * (2 * sum(hidden) + dim + head) + 4 * factor + config.k * per_draw
    return 4 * 4 * params, 4 * per_image


def step_memory_bytes(config) -> int:
    """Estimated peak memory of one training step of ``config`` (a :class:`vae.config.TrainConfig`), in bytes.

    Parameters, gradients and Adam's state, and the activations of each posterior family (see
    :func:`_step_memory_parts`).
    """
    fixed, per_image = _step_memory_parts(config)
    return fixed + config.batch_size * per_image


def device_memory(device: torch.device) -> Optional[int]:
    """Total memory of ``device`` in bytes: the GPU's own for CUDA, else the RAM; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): no check
        return None


def check_step_memory(config, device: torch.device, total: Optional[int] = None) -> None:
    """Refuse a step that needs more than :data:`STEP_MEMORY_FRACTION` of ``total`` (default: the device's memory).

    Raises:
        ValueError: one line with the estimate, the limit, and the largest ``--batch-size`` that fits,
            or, where the weights alone are too many, the largest ``--latent-dim``.
    """
    total = device_memory(device) if total is None else total
    need, limit = step_memory_bytes(config), STEP_MEMORY_FRACTION * (total or 0)
    if total is None or need <= limit:
        return
    fixed, per_image = _step_memory_parts(config)
    fits = int((limit - fixed) // per_image) if fixed < limit else 0  # the largest batch size within the limit
    gib = 2.0**30
    over = f"over {STEP_MEMORY_FRACTION:.0%} of the {total / gib:.1f} GiB of {device.type} memory"
    if fixed < limit:  # the weights fit: fewer images (or draws) per step do
        hint = f"lower `batch_size` to {fits} or `k`" if fits >= 1 else "lower `k`"
        raise ArgumentError(
            "k", f"{config.k} with `batch_size` {config.batch_size}: one training step needs about "
            f"{need / gib:.1f} GiB ({config.batch_size} x {config.k} draws of logits, their gradients and the "
            f"decoder's activations, {fixed / gib:.1f} GiB of weights, gradients and Adam state), {over}; {hint}"
        )
    dims = _largest_latent_dim(config, limit)
    hint = f"lower `latent_dim` to {dims}" if dims >= 1 else "lower `hidden`"
    raise ArgumentError(
        "latent_dim", f"{config.latent_dim} with the {config.posterior} posterior and `hidden` "
        f"{' '.join(map(str, config.hidden))}: one training step needs about {need / gib:.1f} GiB "
        f"({fixed / gib:.1f} GiB of weights, gradients and Adam state; the rest the batch's factors and "
        f"activations), {over}; {hint}"
    )


def _largest_latent_dim(config, limit: float) -> int:
    """The largest ``latent_dim`` up to ``config``'s whose step fits in ``limit`` bytes (0: none)."""
    import dataclasses

    low, high = 0, config.latent_dim  # fits(low) (or low is 0), the answer is at most high
    while low < high:
        mid = (low + high + 1) // 2
        rank = min(config.rank, mid)
        if step_memory_bytes(dataclasses.replace(config, latent_dim=mid, rank=rank)) <= limit:
            low = mid
        else:
            high = mid - 1
    return low
