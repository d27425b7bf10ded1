"""Choosing the torch device and the CPU threads from settings."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bfloat16 arithmetic (x86)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
CPU_MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, kept fixed


def pick_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_device(setting: str) -> str:
    """Check a ``device`` setting (``auto``, ``cpu``, ``cuda``, ``cuda:N``, any torch device name) without using it."""
    if setting != "auto":
        try:
            torch.device(setting)
        except (RuntimeError, ValueError):
            raise ValueError(f"device: {setting!r} is not auto, cpu, cuda or cuda:N") from None
    return setting


def auto_or_count(name: str, setting: str | int, unit: str, minimum: int) -> int | None:
    """A setting that is ``auto`` (-> None) or a count of ``unit`` of at least ``minimum``; one-line ValueError otherwise."""
    if str(setting) == "auto":
        return None
    try:
        count = int(setting)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: {setting!r} is not 'auto' or a number of {unit}") from None
    if count < minimum:
        raise ValueError(f"{name}: {count} must be at least {minimum}")
    return count


def resolve_cpu_threads(setting: str | int) -> int | None:
    """``auto`` -> None (torch's default: every core, right for one site per machine); else a thread count >= 1.

    Several sites on one machine (the simulator, POC) each using every core oversubscribe it: the
    shipped demo's two sites run faster with one thread each.
    """
    return auto_or_count("cpu_threads", setting, "threads", minimum=1)


def apply_cpu_threads(setting: str | int) -> None:
    """Set torch's intra-op threads of this process from the ``cpu_threads`` setting (``auto``: leave them)."""
    threads = resolve_cpu_threads(setting)
    if threads is not None:
        torch.set_num_threads(threads)


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty where there is no such file)."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX): bf16 autocast is then faster than fp32.

    Without it, oneDNN emulates bf16 in fp32 and autocast only costs time, so a site trains in fp32.
    """
    return bool(CPU_BF16_FLAGS and cpu_flags() & set(CPU_BF16_FLAGS))


def autocast_bf16(amp: bool, device: torch.device, cpu_bf16: bool = False) -> bool:
    """Whether a site computes in bf16 autocast on ``device``: ``amp`` on CUDA; on a CPU only where the site
    asks for it (``cpu_bf16``) and the CPU computes bf16 natively (elsewhere fp32)."""
    if not amp:
        return False
    return device.type == "cuda" or (device.type == "cpu" and cpu_bf16 and cpu_has_native_bf16())


@functools.cache
def release_freed_tensors_on_cpu() -> bool:
    """Make glibc give every freed tensor above 128 KiB back to the OS at once; False where libc is not glibc.

    glibc serves blocks above its mmap threshold with mmap, but each time such a block is freed it
    raises the threshold (up to 32 MiB), so the next step's activations come from the heap, which
    keeps freed memory and fragments: a LiteMedSAM site at 112 px, batch 4, resided 1.1 GB higher
    than what it used (docs/performance.md). Fixing the threshold at glibc's starting value turns
    that off; it does not change what is computed, but every large tensor is then mapped afresh
    (page faults: 1.38x the CPU time in the measured step). One call per process is enough.
    """
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, CPU_MMAP_THRESHOLD_BYTES))
