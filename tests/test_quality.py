import math
import warnings

import numpy as np
import pytest

from lab.quality import QualityThresholds, diff_map, optional_metrics, psnr, ssim

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)


def test_identical_images_give_ssim_1_and_infinite_psnr_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ssim(IMAGE, IMAGE) == 1.0 and ssim(IMAGE, IMAGE, channel="luma") == 1.0
        assert math.isinf(psnr(IMAGE, IMAGE))


@pytest.mark.parametrize("sigma", [2.0, 5.0, 10.0])
def test_psnr_of_known_noise_matches_the_formula(sigma):
    base = np.full((128, 128, 3), 128, dtype=np.uint8)
    noise = RNG.normal(0, sigma, size=base.shape)
    noisy = np.clip(base + noise, 0, 255).round().astype(np.uint8)
    mse = np.mean((noisy.astype(float) - base) ** 2)
    assert psnr(noisy, base) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)
    assert psnr(noisy, base) == pytest.approx(10 * math.log10(255**2 / sigma**2), abs=0.1 + 0.02 * sigma)


def test_ssim_falls_with_damage():
    slightly = np.clip(IMAGE.astype(int) + 3, 0, 255).astype(np.uint8)
    badly = RNG.integers(0, 256, size=IMAGE.shape, dtype=np.uint8)
    assert 1.0 > ssim(slightly, IMAGE) > ssim(badly, IMAGE)
    assert -1.0 <= ssim(badly, IMAGE, channel="luma") < 0.2


def test_threshold_logic():
    t = QualityThresholds()
    assert (t.ssim_min, t.psnr_min) == (0.85, 25.0)
    assert t.passes(0.9, 30.0) and not t.passes(0.85, 30.0) and not t.passes(0.9, 25.0)
    assert QualityThresholds(ssim_min=0.5, psnr_min=10).passes(0.6, 11)
    assert t.adherence_drop_max == 0.1
    assert t.passes(0.9, 30.0, adherence_drop=0.8 - 0.7) and not t.passes(0.9, 30.0, adherence_drop=0.2)
    assert QualityThresholds(adherence_drop_max=None).passes(0.9, 30.0, adherence_drop=0.9)


def test_diff_map_and_errors():
    d = diff_map(IMAGE, IMAGE)
    assert d.shape == (64, 64) and d.max() == 0
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(IMAGE, IMAGE[:32])
    with pytest.raises(ValueError, match="channel"):
        ssim(IMAGE, IMAGE, channel="hsv")


def test_lpips_and_clip_need_local_weights(monkeypatch):
    monkeypatch.delenv("LAB_LPIPS_WEIGHTS", raising=False)
    monkeypatch.delenv("LAB_CLIP_MODEL", raising=False)
    reasons = optional_metrics()
    assert set(reasons) == {"lpips", "clip_score"} and all(reasons.values())
