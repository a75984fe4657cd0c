"""Exact peak process memory (Linux VmHWM, resettable) and CUDA peak statistics."""

from __future__ import annotations

import ctypes
import functools
import gc
from pathlib import Path

import psutil

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS; False where unsupported."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def trim_heap() -> bool:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``); False where there is no glibc.

    glibc keeps what a call freed resident; the next call reuses it without growing the RSS, so its
    transient memory would not show in the high-water mark.
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # the C library this process already runs on
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim with
        return None


def peak_rss_bytes() -> int:
    """Peak resident set size since the last reset (or process start)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return psutil.Process().memory_info().rss  # no high-water mark here: current RSS as a floor


def flush(device: str = "cpu") -> None:
    """Collect garbage, trim the heap, empty the CUDA cache and reset peak statistics before a measurement."""
    import torch

    gc.collect()
    trim_heap()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    reset_peak_rss()


def cuda_peaks(device: str) -> tuple[int | None, int | None]:
    """(peak allocated, peak reserved) bytes on a CUDA device; (None, None) elsewhere."""
    if not device.startswith("cuda"):
        return None, None
    import torch

    return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)


def model_peak_mb(weight_bytes: int, peak_rss_mb: float | None, rss_before_mb: float | None,
                  peak_cuda_mb: float | None = None) -> float | None:
    """Peak memory attributable to the model: CUDA peak allocated on a GPU; on CPU, the weights plus
    what a measured call adds over the RSS before it, read after the warm-up (process RSS also holds the
    runtime and heap left over from earlier pipelines, which would make later runs look worse)."""
    if peak_cuda_mb is not None:
        return peak_cuda_mb
    if peak_rss_mb is None or rss_before_mb is None:
        return None
    return weight_bytes / 2**20 + max(peak_rss_mb - rss_before_mb, 0.0)
