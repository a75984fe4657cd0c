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


def _configs(model: str) -> tuple[dict, dict] | None:
    """(vae config, denoiser config) of an embedded model or a local folder, read without loading; None for a
    hub id or a folder whose configs cannot be read."""
    import json
    from pathlib import Path

    from .models import EMBEDDED

    folder = EMBEDDED[model].folder if model in EMBEDDED else Path(model).expanduser()
    try:
        vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
        denoiser_file = next(p for p in (folder / "unet" / "config.json", folder / "transformer" / "config.json")
                             if p.is_file())
        denoiser = json.loads(denoiser_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, StopIteration):
        return None
    return (vae, denoiser) if isinstance(vae, dict) and isinstance(denoiser, dict) else None


def estimate_image_bytes(model: str, height: int | None, width: int | None, dtype: str = "fp32") -> int | None:
    """A lower estimate of the activation memory one image of ``height`` × ``width`` needs (None: unknown).

    What grows with the image: the VAE decoder's last block holds about four tensors of its first-block
    channels at full resolution, and the denoiser (batch 2 under guidance) keeps about a dozen skip tensors of
    its first-block channels at latent resolution. Attention runs through SDPA, which does not hold the
    tokens² score matrix. Weights are not counted (they do not grow with the size).
    """
    configs = _configs(model)
    if configs is None:
        return None
    vae, denoiser = configs
    channels = vae.get("block_out_channels") or [128]
    factor = 2 ** (len(channels) - 1)
    sample = denoiser.get("sample_size")
    # Flux transformers have no sample_size: the VAE's is the native size (as lab.models.default_size reads it)
    default = sample * factor if isinstance(sample, int) else vae.get("sample_size", 512)
    height, width = height or default, width or default
    element = 2 if dtype in ("fp16", "bf16") else 4
    first = denoiser.get("block_out_channels") or [denoiser.get("num_attention_heads", 8) *
                                                   denoiser.get("attention_head_dim", 64)]
    vae_bytes = 4 * channels[0] * height * width * element
    denoiser_bytes = 2 * 12 * first[0] * (height // factor) * (width // factor) * element
    return vae_bytes + denoiser_bytes


def check_fits(model: str, sizes: list[tuple[int | None, int | None]], dtype: str = "fp32",
               echo=None) -> int | None:
    """Refuse (``LabError``) an image size whose estimated memory exceeds what this machine has free; say so
    (``echo``) when it needs over a quarter of it, since its first call will be long. Returns the estimate."""
    from ._checks import LabError

    worst = max(((estimate_image_bytes(model, h, w, dtype) or 0, h, w) for h, w in sizes), default=(0, None, None))
    need, height, width = worst
    if not need:
        return None
    free = psutil.virtual_memory().available
    size = f"{height}x{width}" if height else "the model's default size"
    if need > free:
        raise LabError(f"an image of {size} needs about {need / 2**30:.1f} GiB for activations on {model!r} "
                       f"({dtype}), and this machine has {free / 2**30:.1f} GiB available; pass a smaller --size")
    if need > free / 4 and echo is not None:
        echo(f"note: an image of {size} needs about {need / 2**30:.1f} GiB of the {free / 2**30:.1f} GiB "
             "available; each call is long (the progress bar moves once per call)")
    return need
