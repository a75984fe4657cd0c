"""Image quality against a reference: SSIM and PSNR (scikit-image), with acceptance thresholds."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .results import Record


def _array(image) -> np.ndarray:
    """A uint8 HxWx3 array from a PIL image, a path or an array."""
    if isinstance(image, np.ndarray):
        arr = image
    else:
        from PIL import Image

        img = Image.open(image) if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__") else image
        arr = np.asarray(img.convert("RGB"))
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {arr.dtype}")
    return arr


def _luminance(arr: np.ndarray) -> np.ndarray:
    return arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as PIL's "L"


def ssim(image, reference, *, channel: str = "rgb") -> float:
    """Structural similarity in [-1, 1]; ``channel`` "rgb" (mean over channels) or "luma"."""
    from skimage.metrics import structural_similarity

    a, b = _array(image), _array(reference)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if np.array_equal(a, b):
        return 1.0
    win = min(7, *(s if s % 2 else s - 1 for s in a.shape[:2]))
    if channel == "luma":
        return float(structural_similarity(_luminance(a), _luminance(b), data_range=255.0, win_size=win))
    if channel != "rgb":
        raise ValueError(f"channel must be 'rgb' or 'luma', got {channel!r}")
    return float(structural_similarity(a, b, data_range=255, channel_axis=-1, win_size=win))


def psnr(image, reference) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images (no warning)."""
    a, b = _array(image), _array(reference)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


@dataclass
class QualityThresholds(Record):
    """Seed 002 §1.4: acceptable when SSIM > 0.85 and PSNR > 25 dB."""

    ssim_min: float = 0.85
    psnr_min: float = 25.0

    def passes(self, ssim_value: float, psnr_value: float) -> bool:
        return ssim_value > self.ssim_min and psnr_value > self.psnr_min
