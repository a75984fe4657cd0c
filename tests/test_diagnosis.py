import dataclasses

import pytest

import lab
from lab.benchmarking import StageSummary
from lab.diagnosis import SUGGESTIONS, SUGGESTIONS_CUDA, Thresholds, diagnose
from lab.flops import FlopsReport, Peak, StageFlops
from lab.profiling import OpRecord, ProfileResult, StageSpan
from lab.stats import Latency

from . import fake_nvml

RULES = set(SUGGESTIONS)


def _bench(device="cpu", median=1.0, stages=(0.05, 0.65, 0.15, 0.1), first=1.1, cpu=150.0, rss=(500.0, 520.0),
           cuda_peak=None, weight_mb=100.0, repeats=1, prompts=("a", "b")):
    te, unet, vae, other = stages
    lat = Latency.from_values([median])
    cases = [lab.CaseResult(case=lab.Case(p, steps=4, name=p), latency=lat, first_call_s=first * median,
                            images_per_s=1 / median, peak_rss_mb=rss[1], rss_before_mb=rss[0],
                            peak_cuda_allocated_mb=cuda_peak, cpu_percent=cpu,
                            stages=StageSummary(te, unet, unet / 4, vae, other, [unet / 4] * 4))
             for p in prompts]
    env = lab.Environment.capture("cpu")
    return lab.BenchmarkResult(model="m", pipeline="P", dtype="fp32", device=device, scheduler="S", warmup=1,
                               repeats=repeats, cases=cases, env=env, created="now",
                               weight_bytes=int(weight_mb * 2**20))


def _profile(device="cpu", ops=(("aten::mkldnn_convolution", 100.0), ("aten::addmm", 100.0),
                                ("aten::_scaled_dot_product_flash_attention_for_cpu", 100.0))):
    dev = device.startswith("cuda")
    records = [OpRecord("unet_step_0", name, 1, 0.0 if dev else t, t, t if dev else 0.0, t if dev else 0.0)
               for name, t in ops]
    return ProfileResult(model="m", case=lab.Case("a"), device=device, record_steps=1, denoising_steps=4,
                         wall_s=1.0, spans=[StageSpan("unet_step_0", 0.0, 400.0)], op_records=records,
                         trace_path="t", tensorboard_dir="d", trace_bytes=1, env=lab.Environment.capture("cpu"))


def _flops(utilisation):
    peak = Peak("cpu", "fp32", 1e11, 1024, 0.02)
    stages = [StageFlops("denoiser", 10, 1.0, (utilisation or 200.0) * 1e9, utilisation)]
    return FlopsReport(model="m", case=lab.Case("a"), peak=peak, stages=stages, step_flops=1,
                       step_flops_analytic=1)


def test_a_healthy_run_has_no_findings():
    d = diagnose(_bench(), profile=_profile(), flops=_flops(45.0))
    assert d.findings == [], d.to_markdown()
    assert "cpu-bound-host" in d.skipped and any("host-device-sync" in k and "launch-bound" in k for k in d.skipped)
    assert "No findings" in d.to_markdown()


@pytest.mark.parametrize(
    "kwargs, rule",
    [
        ({"median": 12.0}, "time-over-budget"),
        ({"rss": (500.0, 650.0)}, "memory-over-weights"),  # +150 MB of activations on 100 MB weights
        ({"device": "cuda", "cuda_peak": 250.0, "cpu": 30.0}, "memory-over-weights"),
        ({"device": "cuda", "cuda_peak": 150.0, "cpu": 80.0}, "cpu-bound-host"),
        ({"stages": (0.05, 0.5, 0.2, 0.25)}, "pre-post-overhead"),
        ({"stages": (0.02, 0.8, 0.15, 0.03)}, "denoiser-dominates"),
        ({"stages": (0.05, 0.45, 0.45, 0.05)}, "vae-decode-heavy"),
        ({"first": 3.0}, "first-call-gap"),
        ({"repeats": 3}, "text-encoder-recomputed"),
        ({"prompts": ("a", "a")}, "text-encoder-recomputed"),
    ],
)
def test_each_benchmark_rule_fires_on_its_trigger(kwargs, rule):
    d = diagnose(_bench(**kwargs), thresholds=Thresholds())
    assert rule in d.rules, d.to_markdown()
    finding = next(f for f in d.findings if f.rule == rule)
    on_cuda = kwargs.get("device") == "cuda"
    assert finding.evidence and finding.suggest == (SUGGESTIONS_CUDA.get(rule, SUGGESTIONS[rule]) if on_cuda
                                                    else SUGGESTIONS[rule])
    others = set(d.rules) - {rule}
    assert not others - {"denoiser-dominates"}, others  # nothing else fires on the same healthy base


def test_quality_rule():
    assert "quality-drop" in diagnose(_bench(), ssim=0.7).rules
    assert "quality-drop" not in diagnose(_bench(), ssim=0.95).rules
    assert diagnose(ssim=0.5).rules == ["quality-drop"]


@pytest.mark.parametrize(
    "name, rule",
    [("aten::_scaled_dot_product_flash_attention_for_cpu", "attention-bound"),
     ("aten::mkldnn_convolution", "convolution-bound"), ("aten::addmm", "linear-bound")],
)
def test_op_family_rules(name, rule):
    ops = [(n, 500.0 if n == name else 100.0) for n in
           ("aten::mkldnn_convolution", "aten::addmm", "aten::_scaled_dot_product_flash_attention_for_cpu")]
    d = diagnose(profile=_profile(ops=ops))
    assert d.rules == [rule]
    assert d.findings[0].evidence[rule.replace("-bound", "_share")] == pytest.approx(500 / 700)


def test_low_utilisation_and_sync_rules():
    assert diagnose(flops=_flops(5.0)).rules == ["low-utilisation"]
    sync = _profile("cuda", ops=(("aten::mkldnn_convolution", 100.0), ("cudaStreamSynchronize", 1.0),
                                 ("aten::addmm", 100.0), ("aten::bmm", 100.0)))
    assert "host-device-sync" in diagnose(profile=sync).rules
    assert "host-device-sync" not in diagnose(profile=_profile("cuda")).rules
    # the stage timer's own torch.cuda.synchronize is not the pipeline's doing
    timer = _profile("cuda", ops=(("aten::mkldnn_convolution", 100.0), ("cudaDeviceSynchronize", 1.0)))
    assert "host-device-sync" not in diagnose(profile=timer).rules


def test_utilisation_above_the_peak_is_flagged_not_reported():
    d = diagnose(flops=_flops(None))
    assert d.rules == ["peak-unreliable"] and "under-reads" in d.findings[0].message


def test_thresholds_are_configurable():
    bench = _bench(median=5.0)
    assert "time-over-budget" not in diagnose(bench).rules
    assert "time-over-budget" in diagnose(bench, thresholds=Thresholds(time_budget_s=2.0)).rules


def test_rendering_and_roundtrip():
    d = diagnose(_bench(median=12.0, first=3.0))
    assert d.findings[0].severity == "high"  # most severe first
    frame = d.to_frame()
    assert list(frame.columns) == ["rule", "severity", "finding", "evidence", "try"]
    assert "time-over-budget" in d.to_markdown()
    assert type(d).from_json(d.to_json()) == d


def test_needs_some_input():
    with pytest.raises(lab.LabError, match="at least one"):
        diagnose()


def test_every_rule_but_the_warm_up_one_suggests_recipes():
    assert sorted(r for r in RULES if not SUGGESTIONS[r]) == ["first-call-gap", "gpu-throttling", "peak-unreliable"]
    assert all(name in lab.recipes.names() for names in SUGGESTIONS_CUDA.values() for name in names)
    assert dataclasses.fields(Thresholds)


def _nvml_samples(run):
    """ResourceSamples as the monitor takes them, from the recorded NVML replies of ``run``."""
    from lab.monitor import ResourceSample
    from lab.power import nvml_readings

    nvml = fake_nvml.module(run)
    out = []
    for i in range(len(fake_nvml.load()["runs"][run])):
        used = nvml.nvmlDeviceGetMemoryInfo("gpu0").used / 2**20
        out.append(ResourceSample(t=0.1 * i, cpu_percent=100.0, rss_mb=900.0, system_memory_percent=30.0,
                                  gpu_memory_mb=used, gpu_util_percent=99.0, **nvml_readings(nvml, "gpu0")))
    return out


def test_throttling_rule_fires_on_throttled_samples_only():
    bench = _bench(device="cuda", cuda_peak=150.0, cpu=30.0)
    bench.resources = _nvml_samples("throttled")
    d = diagnose(bench)
    finding = next(f for f in d.findings if f.rule == "gpu-throttling")
    assert finding.severity == "high" and finding.evidence["throttled_share"] == pytest.approx(4 / 5)
    assert finding.evidence["peak_temp_c"] == 89 and finding.evidence["max_sm_clock_mhz"] == 1980
    assert set(finding.evidence["reasons"].split(",")) == {"sw_power_cap", "sw_thermal", "hw_thermal"}
    assert "thermal and power throttled" in finding.message and "nvidia-smi -lgc" in finding.message
    bench.resources = _nvml_samples("steady")  # an idle sample at 345 MHz (reason gpu_idle) is no throttling
    d = diagnose(bench)
    assert "gpu-throttling" not in d.rules and "gpu-throttling" not in d.skipped
    assert "gpu-throttling" in diagnose(_bench()).skipped  # a CPU run has no clock samples
