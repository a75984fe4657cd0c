"""Image quality: SSIM and PSNR against a reference (scikit-image), prompt adherence of shape scenes
(``lab.shapes`` detector, no downloaded weights), and acceptance thresholds."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .imaging import luminance, to_array
from .results import Record


def ssim(image, reference, *, channel: str = "rgb") -> float:
    """Structural similarity in [-1, 1]; ``channel`` "rgb" (mean over channels) or "luma"."""
    from skimage.metrics import structural_similarity

    if channel not in ("rgb", "luma"):
        raise ValueError(f"channel must be 'rgb' or 'luma', got {channel!r}")
    a, b = to_array(image), to_array(reference)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if np.array_equal(a, b):
        return 1.0
    win = min(7, *(s if s % 2 else s - 1 for s in a.shape[:2]))
    if channel == "luma":
        return float(structural_similarity(luminance(a), luminance(b), data_range=255.0, win_size=win))
    return float(structural_similarity(a, b, data_range=255, channel_axis=-1, win_size=win))


def psnr(image, reference) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images (no warning)."""
    a, b = to_array(image), to_array(reference)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


@dataclass
class QualityThresholds(Record):
    """Seed 002 §1.4: acceptable when SSIM > 0.85 and PSNR > 25 dB."""

    ssim_min: float = 0.85
    psnr_min: float = 25.0
    adherence_drop_max: float | None = 0.1  # shape scenes: fail when adherence falls this far below the baseline
    # random weights, where SSIM cannot judge: the final latent's relative error against the baseline's (lab.trajectory)
    trajectory_rel_err_max: float | None = 0.1

    def passes(self, ssim_value: float, psnr_value: float, adherence_drop: float | None = None) -> bool:
        ok = ssim_value > self.ssim_min and psnr_value > self.psnr_min
        if adherence_drop is not None and self.adherence_drop_max is not None:
            ok = ok and adherence_drop <= self.adherence_drop_max + 1e-9  # scores are sums of tenths
        return ok


def diff_map(image, reference) -> np.ndarray:
    """Per-pixel absolute difference of luminance, 0..255 (float), for heat maps."""
    a, b = to_array(image), to_array(reference)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    return np.abs(luminance(a) - luminance(b))


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
class AdherenceReport(Record):
    """Prompt adherence of shape-scene images: per image and attribute 1 (right) or 0 (wrong), else a
    fraction over the shapes of the prompt."""

    prompts: list[str]
    scores: list[dict[str, float]]

    def to_frame(self):
        import pandas as pd

        frame = pd.DataFrame(self.scores, index=pd.Index(self.prompts, name="prompt"))
        frame["overall"] = frame.mean(axis=1)
        return frame

    def per_attribute(self) -> dict[str, float]:
        """Mean per attribute, then ``overall`` (mean over attributes) and ``exact`` (images right in all)."""
        frame = self.to_frame()
        out = {k: float(v) for k, v in frame.mean().items()}
        out["exact"] = float((frame.drop(columns="overall") == 1.0).all(axis=1).mean())
        return out

    @property
    def overall(self) -> float:
        return self.per_attribute()["overall"]

    def _repr_markdown_(self) -> str:
        import pandas as pd

        return (f"Prompt adherence over {len(self.prompts)} images\n\n"
                + pd.Series(self.per_attribute(), name="score").round(3).to_frame().to_markdown())


def adherence(images, prompts) -> AdherenceReport:
    """Score generated shape scenes against their prompts (lists, or one image and one prompt)."""
    from .shapes import adherence as score

    if isinstance(prompts, str):
        images, prompts = [images], [prompts]
    images, prompts = list(images), list(prompts)
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images for {len(prompts)} prompts")
    return AdherenceReport(prompts, [score(img, p).scores for img, p in zip(images, prompts)])


def comparison_adherence(comparison) -> dict[str, AdherenceReport]:
    """Adherence of each recipe's images in a comparison (shape-scene prompts only), baseline first."""
    from pathlib import Path

    from .shapes import is_shape_caption

    out: dict[str, AdherenceReport] = {}
    for r in comparison.records:
        if r.status == "ok" and r.image and is_shape_caption(r.prompt):
            report = out.setdefault(r.recipe, AdherenceReport([], []))
            report.prompts.append(r.prompt)
            report.scores.append(adherence(Path(comparison.out) / r.image, r.prompt).scores[0])
    return out


def _adherence_or_none(image, prompt: str) -> float | None:
    from .shapes import adherence as score, is_shape_caption

    return score(image, prompt).overall if is_shape_caption(prompt) else None


@dataclass
class ImageQuality(Record):
    recipe: str
    case: str
    seed: int
    ssim: float
    ssim_luma: float
    psnr: float
    passed: bool
    adherence: float | None = None  # shape-scene prompts only
    baseline_adherence: float | None = None
    trajectory_rel_err: float | None = None  # final latent against the baseline's (lab.trajectory)
    judged_by: str = "ssim"  # "ssim" (SSIM, PSNR and adherence) | "trajectory" (random weights: SSIM cannot judge)


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
        extra = {}
        if frame["adherence"].notna().any():
            extra = dict(adherence=("adherence", "mean"), baseline_adherence=("baseline_adherence", "mean"))
        if "trajectory_rel_err" in frame and frame["trajectory_rel_err"].notna().any():
            extra["max_trajectory_rel_err"] = ("trajectory_rel_err", "max")
        out = frame.groupby("recipe", sort=False).agg(
            images=("passed", "size"), mean_ssim=("ssim", "mean"), min_ssim=("ssim", "min"),
            min_ssim_luma=("ssim_luma", "min"), min_psnr=("psnr", "min"), **extra, pass_rate=("passed", "mean"))
        out["verdict"] = ["pass" if rate == 1.0 else "fail" for rate in out["pass_rate"]]
        return out

    @property
    def passed(self) -> bool:
        return all(i.passed for i in self.images)

    def _repr_markdown_(self) -> str:
        t = self.thresholds
        drop = (f", adherence at most {t.adherence_drop_max} below it (shape prompts)"
                if t.adherence_drop_max is not None else "")
        return (f"Quality gate: SSIM > {t.ssim_min}, PSNR > {t.psnr_min} dB against `{self.baseline}`{drop}\n\n"
                + self.summary().round(4).to_markdown())


def evaluate(comparison, thresholds: QualityThresholds | None = None) -> QualityReport:
    """Apply the quality gate to every successful run of a comparison (baseline images excluded); for
    shape-scene prompts, adherence to the prompt as well. On a random-weight model, where image SSIM cannot
    judge (the trajectories diverge), a run passes when its final latent is within
    ``trajectory_rel_err_max`` of the baseline's (``lab.trajectory``); without a trajectory it fails."""
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
        adh, base_adh = _adherence_or_none(img, r.prompt), _adherence_or_none(ref_img, ref.prompt)
        drop = base_adh - adh if adh is not None and base_adh is not None else None
        traj = r.trajectory.final_rel_error if getattr(r, "trajectory", None) is not None else None
        if comparison.random_weights and thresholds.trajectory_rel_err_max is not None:
            passed = traj is not None and traj <= thresholds.trajectory_rel_err_max
            rows.append(ImageQuality(r.recipe, r.case, r.seed, s, s_luma, p, passed, adh, base_adh, traj, "trajectory"))
        else:
            rows.append(ImageQuality(r.recipe, r.case, r.seed, s, s_luma, p, thresholds.passes(s, p, drop), adh,
                                     base_adh, traj))
    return QualityReport(comparison.baseline, thresholds, rows, optional_metrics())
