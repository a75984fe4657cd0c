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

    if channel not in ("rgb", "luma"):
        raise ValueError(f"channel must be 'rgb' or 'luma', got {channel!r}")
    a, b = _array(image), _array(reference)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if np.array_equal(a, b):
        return 1.0
    win = min(7, *(s if s % 2 else s - 1 for s in a.shape[:2]))
    if channel == "luma":
        return float(structural_similarity(_luminance(a), _luminance(b), data_range=255.0, win_size=win))
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


def diff_map(image, reference) -> np.ndarray:
    """Per-pixel absolute difference of luminance, 0..255 (float), for heat maps."""
    a, b = _array(image), _array(reference)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    return np.abs(_luminance(a) - _luminance(b))


def optional_metrics() -> dict[str, str]:
    """LPIPS and CLIP score need weights nobody can download here: the reason each is unavailable.

    They are used only when the user points ``LAB_LPIPS_WEIGHTS`` / ``LAB_CLIP_MODEL`` at local
    files and the packages are installed; an empty dict means both are available.
    """
    import importlib.util
    import os

    reasons = {}
    if importlib.util.find_spec("lpips") is None:
        reasons["lpips"] = "the lpips package is not installed"
    elif not os.path.exists(os.environ.get("LAB_LPIPS_WEIGHTS", "")):
        reasons["lpips"] = "no local LPIPS weights (set LAB_LPIPS_WEIGHTS to a .pth file)"
    if not os.path.isdir(os.environ.get("LAB_CLIP_MODEL", "")):
        reasons["clip_score"] = "no local CLIP model folder (set LAB_CLIP_MODEL to a transformers CLIP folder)"
    return reasons


@dataclass
class ImageQuality(Record):
    recipe: str
    case: str
    seed: int
    ssim: float
    ssim_luma: float
    psnr: float
    passed: bool


@dataclass
class QualityReport(Record):
    """The quality gate over a comparison: every image against the baseline image of its prompt and seed."""

    baseline: str
    thresholds: QualityThresholds
    images: list[ImageQuality]
    skipped_metrics: dict[str, str]

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([i.to_dict() for i in self.images])

    def summary(self):
        """Per recipe: mean SSIM, worst SSIM, worst PSNR, pass rate and the verdict."""
        frame = self.to_frame()
        if frame.empty:
            return frame
        out = frame.groupby("recipe", sort=False).agg(
            images=("passed", "size"), mean_ssim=("ssim", "mean"), min_ssim=("ssim", "min"),
            min_ssim_luma=("ssim_luma", "min"), min_psnr=("psnr", "min"), pass_rate=("passed", "mean"))
        out["verdict"] = ["pass" if rate == 1.0 else "fail" for rate in out["pass_rate"]]
        return out

    @property
    def passed(self) -> bool:
        return all(i.passed for i in self.images)

    def _repr_markdown_(self) -> str:
        t = self.thresholds
        return (f"Quality gate: SSIM > {t.ssim_min}, PSNR > {t.psnr_min} dB against `{self.baseline}`\n\n"
                + self.summary().round(4).to_markdown())


def evaluate(comparison, thresholds: QualityThresholds | None = None) -> QualityReport:
    """Apply the quality gate to every successful run of a comparison (baseline images excluded)."""
    from pathlib import Path

    thresholds = thresholds or QualityThresholds()
    base = {(r.case, r.seed): r for r in comparison.records if r.recipe == comparison.baseline and r.status == "ok"}
    rows = []
    for r in comparison.records:
        ref = base.get((r.case, r.seed))
        if r.status != "ok" or r.recipe == comparison.baseline or ref is None:
            continue
        img, ref_img = Path(comparison.out) / r.image, Path(comparison.out) / ref.image
        s, s_luma, p = ssim(img, ref_img), ssim(img, ref_img, channel="luma"), psnr(img, ref_img)
        rows.append(ImageQuality(r.recipe, r.case, r.seed, s, s_luma, p, thresholds.passes(s, p)))
    return QualityReport(comparison.baseline, thresholds, rows, optional_metrics())
