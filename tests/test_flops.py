import pytest
import torch

import lab
from lab.flops import analytic_step_flops, flop_counter, flops_report, measure_peak, step_flops
from lab.models import build_embedded


def _count(fn) -> int:
    with flop_counter() as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def test_linear_and_conv_flops_are_exact():
    linear = torch.nn.Linear(64, 32)
    assert _count(lambda: linear(torch.zeros(8, 64))) == 2 * 8 * 64 * 32
    conv = torch.nn.Conv2d(3, 16, kernel_size=3, padding=1)
    assert _count(lambda: conv(torch.zeros(2, 3, 10, 10))) == 2 * (2 * 16 * 10 * 10) * 3 * 9


def test_cpu_attention_is_counted():
    b, h, sq, sk, d = 2, 4, 64, 77, 8
    q, k = torch.zeros(b, h, sq, d), torch.zeros(b, h, sk, d)
    flops = _count(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, k))
    assert flops == 4 * b * h * sq * sk * d  # QK^T and AV, 2 FLOPs per multiply-add


@pytest.fixture(scope="module")
def sd15():
    return build_embedded("sd15-arch", empty=True)


def test_sd15_step_flops_match_the_published_figure(sd15):
    counted = step_flops(sd15, 512, 512, batch=2)
    assert 1.35e12 * 0.9 <= counted["total"] <= 1.7e12 * 1.1
    without_attention = counted["total"] - counted["bmm"]
    assert without_attention == pytest.approx(1.35e12, rel=0.1)


def test_two_counts_agree(sd15):
    counted = step_flops(sd15, 256, 256, batch=2)["total"]
    analytic = analytic_step_flops(sd15, 256, 256, batch=2)
    assert analytic["total"] == pytest.approx(counted, rel=0.01)
    assert analytic["attention"] > 0 and analytic["conv"] > 0 and analytic["linear"] > 0


def test_sdxl_inputs_are_built_for_text_time_conditioning():
    pipe = build_embedded("tiny-sdxl", empty=True)
    assert step_flops(pipe, 64, 64)["total"] == pytest.approx(analytic_step_flops(pipe, 64, 64)["total"],
                                                                   rel=0.01)


def test_peak_is_positive_and_plausible():
    peak = measure_peak("cpu", "fp32", sizes=(128, 256), min_time=0.02, repeats=3)
    assert 1e8 < peak.flops_per_s < 1e14 and peak.size in (128, 256)
    assert set(peak.by_size) == {"128", "256"} and max(peak.by_size.values()) == peak.flops_per_s
    assert peak.products >= 1 and peak.repeats == 3
    assert peak.seconds == pytest.approx(2 * peak.size**3 / peak.flops_per_s)


def test_peak_dtypes_are_checked():
    with pytest.raises(lab.LabError, match="needs a CUDA device"):
        measure_peak("cpu", "fp8")
    with pytest.raises(lab.LabError, match="peak dtype"):
        measure_peak("cpu", "int3")
    assert lab.flops.peak_dtypes("cuda", (9, 0)) == ["fp32", "fp16", "tf32", "bf16", "fp8"]
    assert lab.flops.peak_dtypes("cuda", (7, 5)) == ["fp32", "fp16"]


def test_utilisation_is_never_reported_above_the_peak(tiny_pipe):
    from lab.flops import Peak

    case = lab.Case("a red circle", steps=2)
    low = Peak("cpu", "fp32", 1e6, 256, 1.0)  # what a busy host can read: far below what the UNet achieves
    report = flops_report(tiny_pipe, case, peak=low, repeats=1)
    assert all(s.utilisation_pct is None for s in report.stages if s.flops)
    assert not report.peak_reliable and "peak unreliable" in report.to_markdown()


def test_flops_report_per_stage(tiny_pipe):
    case = lab.Case("a red circle", steps=3)
    report = flops_report(tiny_pipe, case, peak=measure_peak("cpu", "fp32", sizes=(256,), min_time=0.05))
    unet = report.stage("denoiser")
    steps = tiny_pipe.num_timesteps
    assert unet.flops == pytest.approx(steps * report.step_flops, rel=1e-6)  # counted run = meta count
    assert report.stage("vae_decode").flops > 0 and report.stage("text_encoder").flops > 0
    assert unet.utilisation_pct is None or 0 < unet.utilisation_pct <= 100
    assert report.stage("total").flops == sum(s.flops for s in report.stages if s.stage != "total")
    assert type(report).from_json(report.to_json()) == report
    assert list(report.to_frame().columns) == ["gflops", "seconds", "achieved_gflops_per_s", "utilisation_pct"]
