"""``diagnose()``: turn measurements into findings with evidence and suggested recipes.

The rules are the bottleneck checklist of seed 002 §1 (time over budget, memory over twice the
weights, CPU-bound host work, quality drop) plus what a profile shows: which stage and which op
family dominates, first-call cost, utilisation against the device peak, text encoding repeated
for the same prompt, host-device synchronisation inside the denoising loop, and on a GPU whether the
host keeps it busy at all (launch-bound: kernels fill only part of each step) and whether it ran
throttled (seed 000's power bottleneck: SM clock below its maximum with NVML's thermal or power reason set).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._checks import LabError
from .denoiser import ModelKind, is_step_stage
from .host import HostLoad
from .memory import model_peak_mb
from .results import Record

# The recipe names each rule suggests: the one place they are written down (the recipe catalog
# implements these names).
SUGGESTIONS: dict[str, list[str]] = {
    "time-over-budget": ["bf16", "fp16", "compile-denoiser", "dpmpp-2m-karras", "lcm"],
    # not attention-slicing: with SDPA (the default) it saves nothing and costs time (docs/benchmarks.md)
    "memory-over-weights": ["vae-slicing", "vae-tiling", "model-cpu-offload"],
    "cpu-bound-host": ["cache-prompt-embeds", "compile-denoiser"],
    "pre-post-overhead": ["cache-prompt-embeds", "compile-vae"],
    "quality-drop": ["fp32", "quanto-denoiser-int8w"],
    "denoiser-dominates": ["bf16", "compile-denoiser", "dpmpp-2m-karras"],
    "attention-bound": ["sdpa", "xformers", "fused-qkv"],
    "convolution-bound": ["channels-last", "bf16", "compile-denoiser"],
    "linear-bound": ["fused-qkv", "bf16", "quanto-denoiser-int8w"],
    "vae-decode-heavy": ["vae-tiling", "compile-vae", "bf16"],
    "first-call-gap": [],  # no recipe: warm up before serving, as the finding says
    "low-utilisation": ["compile-denoiser", "channels-last", "bf16"],
    "text-encoder-recomputed": ["cache-prompt-embeds"],
    "host-device-sync": ["compile-denoiser"],
    "launch-bound": ["compile-denoiser-reduce-overhead", "cache-prompt-embeds"],
    "peak-unreliable": [],
    "gpu-throttling": [],  # no recipe: power limit, cooling or locked clocks, as the finding says
}
# On a GPU the same findings call for other recipes: CUDA graphs (compile mode reduce-overhead) remove the
# per-kernel launch cost that dominates an eager fp16 UNet step (H100: 41 -> 9.2 ms per sd15 step).
SUGGESTIONS_CUDA: dict[str, list[str]] = {
    "time-over-budget": ["fp16", "compile-denoiser-reduce-overhead", "dpmpp-2m-karras", "lcm"],
    "cpu-bound-host": ["compile-denoiser-reduce-overhead", "cache-prompt-embeds"],
    "denoiser-dominates": ["fp16", "compile-denoiser-reduce-overhead", "dpmpp-2m-karras"],
    "convolution-bound": ["channels-last", "fp16", "compile-denoiser-reduce-overhead"],
    "low-utilisation": ["compile-denoiser-reduce-overhead", "channels-last", "fp16"],
    "host-device-sync": ["compile-denoiser-reduce-overhead"],
}

SEVERITIES = ("high", "medium", "low", "info")
OP_FAMILIES = {
    "attention": ("attention", "bmm", "baddbmm", "softmax"),
    "convolution": ("conv",),
    "linear": ("addmm", "linear", "aten::mm", "matmul"),
}


@dataclass
class Thresholds(Record):
    """When each rule fires; every value can be changed per call."""

    time_budget_s: float = 10.0  # seconds per image (seed 002: > 10 s)
    memory_ratio: float = 2.0  # peak memory / weight bytes (seed 002: > 2x model size)
    host_cpu_percent: float = 50.0  # CPU % while a GPU computes (seed 002: > 50 %)
    other_share: float = 0.15  # un-attributed (pre/post-processing) share of the call
    ssim_min: float = 0.8  # seed 002: SSIM < 0.8
    denoiser_share: float = 0.7
    op_family_share: float = 0.4  # share of the denoiser's self time for an op family to "dominate"
    vae_share: float = 0.2
    first_call_ratio: float = 1.5
    utilisation_min_pct: float = 20.0
    text_encoder_share: float = 0.01
    syncs_per_step: float = 1.0
    device_busy_min: float = 0.6  # share of a denoising step's wall time the GPU spends in kernels
    throttle_clock_ratio: float = 0.95  # SM clock below this share of its maximum, with a power/thermal reason set
    throttle_share: float = 0.1  # share of the GPU samples throttled for the rule to fire

    renamed = {"unet_share": "denoiser_share"}


@dataclass
class Finding(Record):
    rule: str
    severity: str
    message: str
    evidence: dict[str, Any]
    suggest: list[str]


@dataclass
class Diagnosis(Record):
    """Findings (most severe first), and the rules that could not be checked with the reason."""

    findings: list[Finding]
    skipped: dict[str, str]
    thresholds: Thresholds

    @property
    def rules(self) -> list[str]:
        return [f.rule for f in self.findings]

    def to_frame(self):
        import pandas as pd

        rows = [{"rule": f.rule, "severity": f.severity, "finding": f.message,
                 "evidence": ", ".join(f"{k}={_fmt(v)}" for k, v in f.evidence.items()),
                 "try": ", ".join(f.suggest)} for f in self.findings]
        return pd.DataFrame(rows, columns=["rule", "severity", "finding", "evidence", "try"])

    def to_markdown(self) -> str:
        if not self.findings:
            body = "No findings: nothing crossed a threshold."
        else:
            body = self.to_frame().to_markdown(index=False)
        if self.skipped:
            body += "\n\nNot checked: " + "; ".join(f"`{k}` ({v})" for k, v in self.skipped.items())
        return body

    def _repr_markdown_(self) -> str:
        return self.to_markdown()


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _finding(rule: str, severity: str, message: str, cuda: bool = False, **evidence: Any) -> Finding:
    table = SUGGESTIONS_CUDA if cuda and rule in SUGGESTIONS_CUDA else SUGGESTIONS
    return Finding(rule, severity, message, evidence, list(table.get(rule, [])))


def _benchmark_rules(bench, th: Thresholds, ssim: float | None, out: list[Finding], skipped: dict[str, str]) -> None:
    cases = [c for c in bench.cases if c.latency is not None]
    if not cases:
        skipped["benchmark rules"] = "no successful case"
        return
    on_cuda = bench.device.startswith("cuda")
    host = HostLoad.combine([c.host for c in cases])
    busy = host is not None and host.busy
    if busy:
        out.append(_finding("host-contention", "high",
                            f"the host was busy while this was measured ({'; '.join(host.reasons)}): this process "
                            f"got {host.share:.0%} of the CPU time used, so its times say more about the host than "
                            "the pipeline; rerun on a quiet host before acting on them", cuda=on_cuda,
                            other_cores=host.other_cores, cores=host.cores, share=host.share,
                            steal_percent=host.steal_percent, load_avg=host.load_avg))
        withheld = f"withheld: measured under host contention ({'; '.join(host.reasons)})"
        skipped["time-over-budget"] = skipped["first-call-gap"] = withheld

    slow = max(cases, key=lambda c: c.latency.median)
    if not busy and slow.latency.median > th.time_budget_s:
        out.append(_finding("time-over-budget", "high",
                            f"{slow.case.name} takes {slow.latency.median:.2f} s per image, over the "
                            f"{th.time_budget_s:g} s budget", cuda=on_cuda, median_s=slow.latency.median,
                            budget_s=th.time_budget_s, cases_over=sum(c.latency.median > th.time_budget_s
                                                                      for c in cases)))

    if bench.weight_bytes:
        worst, ratio = None, 0.0
        for c in cases:
            peak_mb = model_peak_mb(bench.weight_bytes, c.peak_rss_mb, c.rss_before_mb,
                                    c.peak_cuda_allocated_mb if on_cuda else None)
            if peak_mb is None:
                continue
            r = peak_mb * 2**20 / bench.weight_bytes
            if r > ratio:
                worst, ratio = (c, peak_mb), r
        if worst and ratio > th.memory_ratio:
            out.append(_finding("memory-over-weights", "medium",
                                f"peak memory is {ratio:.1f}x the weights ({worst[0].case.name}): activations, "
                                "not weights, set the footprint", peak_mb=worst[1],
                                weights_mb=bench.weight_bytes / 2**20, ratio=ratio))
    else:
        skipped["memory-over-weights"] = "weight bytes unknown"

    if on_cuda:
        busy = max(cases, key=lambda c: c.cpu_percent or 0.0)
        if (busy.cpu_percent or 0.0) > th.host_cpu_percent:
            out.append(_finding("cpu-bound-host", "medium",
                                f"the host CPU is {busy.cpu_percent:.0f}% busy while the GPU computes", cuda=True,
                                cpu_percent=busy.cpu_percent))
    elif host is not None:
        out.append(_finding("cpu-bound-host", "info",
                            f"the CPU is the compute device: this process got {host.share:.0%} of the CPU time used "
                            f"on the host ({host.own_cpu_s / host.seconds:.2f} of {host.cores} cores on average; "
                            f"other processes {host.other_cores:.2f})", share=host.share,
                            own_cores=host.own_cpu_s / host.seconds if host.seconds else 0.0,
                            other_cores=host.other_cores, cores=host.cores))
        out[-1].suggest = []  # a reading of the host, not a fault of the pipeline
    else:
        skipped["cpu-bound-host"] = "the CPU is the compute device here, and no host load was recorded"

    shares = {c.case.name: c.stages.shares() for c in cases}
    name, share = max(((n, s["other"]) for n, s in shares.items()), key=lambda x: x[1])
    if share > th.other_share:
        out.append(_finding("pre-post-overhead", "medium",
                            f"{share:.0%} of {name}'s time is outside the text encoder, denoiser and VAE "
                            "(pre/post-processing, scheduler setup)", other_share=share))

    name, share = max(((n, s["denoiser"]) for n, s in shares.items()), key=lambda x: x[1])
    if share > th.denoiser_share:
        out.append(_finding("denoiser-dominates", "info", f"the denoiser takes {share:.0%} of the time ({name}): "
                            "optimise the denoising loop first", cuda=on_cuda, denoiser_share=share))

    name, share = max(((n, s["vae_decode"]) for n, s in shares.items()), key=lambda x: x[1])
    if share > th.vae_share:
        out.append(_finding("vae-decode-heavy", "medium",
                            f"VAE decode takes {share:.0%} of the time ({name})", vae_share=share))

    gaps = [(c, c.first_call_s / c.latency.median) for c in cases if c.first_call_s]
    if gaps and not busy:
        c, ratio = max(gaps, key=lambda x: x[1])
        if ratio > th.first_call_ratio:
            out.append(_finding("first-call-gap", "low",
                                f"the first call of {c.case.name} took {ratio:.1f}x the steady state: warm up "
                                "(or cache compiled graphs) before serving", first_call_s=c.first_call_s,
                                median_s=c.latency.median, ratio=ratio))

    prompts = [c.case.prompt for c in cases]
    repeated = bench.repeats > 1 or len(set(prompts)) < len(prompts)
    name, share = max(((n, s["text_encoder"]) for n, s in shares.items()), key=lambda x: x[1])
    if repeated and share > th.text_encoder_share:
        out.append(_finding("text-encoder-recomputed", "low",
                            f"the same prompts were encoded again on every call ({share:.1%} of {name}'s time); "
                            "cache prompt embeddings", text_encoder_share=share, calls_per_prompt=bench.repeats))

    if ssim is not None and ssim < th.ssim_min:
        out.append(_finding("quality-drop", "high", f"SSIM {ssim:.3f} against the reference is below "
                            f"{th.ssim_min}: the optimisation went too far", ssim=ssim))


def _throttle_rule(bench, th: Thresholds, out: list[Finding], skipped: dict[str, str]) -> None:
    """Thermal or power throttling: samples whose SM clock is below its maximum with such a reason set."""
    from .power import POWER_REASONS, THERMAL_REASONS

    samples = [s for s in bench.resources if s.sm_clock_mhz is not None and s.sm_clock_max_mhz
               and s.throttle_reasons is not None]
    if not samples:
        skipped["gpu-throttling"] = ("no GPU clock samples (benchmark with a lab.ResourceMonitor on an NVIDIA GPU "
                                     "with nvidia-ml-py)")
        return
    power, thermal = set(POWER_REASONS.values()), set(THERMAL_REASONS.values())
    slow = [s for s in samples if s.sm_clock_mhz < th.throttle_clock_ratio * s.sm_clock_max_mhz
            and set(s.throttle_reasons) & (power | thermal)]
    share = len(slow) / len(samples)
    if share < th.throttle_share:
        return
    reasons = sorted({r for s in slow for r in s.throttle_reasons if r in power | thermal})
    kinds = [k for k, names in (("thermal", thermal), ("power", power)) if set(reasons) & names]
    clocks = sorted(s.sm_clock_mhz for s in slow)
    temps = [s.gpu_temp_c for s in slow if s.gpu_temp_c is not None]
    watts = [s.gpu_power_w for s in slow if s.gpu_power_w is not None]
    advice = []
    if "thermal" in kinds:
        advice.append("cooling: check airflow, fans and the room, let the GPU cool between runs, or lock the SM "
                      "clock below the throttle point (`nvidia-smi -lgc`) so it stops oscillating (seed 000: adjust "
                      "the frequency to the temperature)")
    if "power" in kinds:
        advice.append("power: compare the draw with the limit (`nvidia-smi -q -d POWER`); a lower precision (fp16, "
                      "bf16, int8 weights) or a smaller batch draws less per image, and a locked lower clock gives "
                      "steady figures")
    evidence = {"throttled_share": share, "median_sm_clock_mhz": clocks[len(clocks) // 2],
                "max_sm_clock_mhz": max(s.sm_clock_max_mhz for s in slow), "reasons": ",".join(reasons)}
    if temps:
        evidence["peak_temp_c"] = max(temps)
    if watts:
        evidence["mean_power_w"] = sum(watts) / len(watts)
    out.append(_finding("gpu-throttling", "high",
                        f"the GPU was {' and '.join(kinds)} throttled in {share:.0%} of the samples (SM clock "
                        f"{evidence['median_sm_clock_mhz']:.0f} of {evidence['max_sm_clock_mhz']:.0f} MHz, "
                        f"{evidence['reasons']}): its latencies are not the card's steady state. Fix the "
                        + "; ".join(advice), **evidence))


def _op_family(name: str) -> str:
    lowered = name.lower()
    for family, keys in OP_FAMILIES.items():
        if any(k in lowered for k in keys):
            return family
    return "other"


def _profile_rules(prof, th: Thresholds, bench, out: list[Finding], skipped: dict[str, str]) -> None:
    on_cuda = prof.device.startswith("cuda")
    steps_ops = [r for r in prof.op_records if is_step_stage(r.stage) and r.kind == "op"]
    on_device = prof.on_device
    key = "self_device_us" if on_device else "self_cpu_us"
    total = sum(getattr(r, key) for r in steps_ops)
    if total > 0:
        families: dict[str, float] = {}
        for r in steps_ops:
            fam = _op_family(r.name)
            families[fam] = families.get(fam, 0.0) + getattr(r, key)
        family, t = max(((f, v) for f, v in families.items() if f != "other"), key=lambda x: x[1],
                        default=("other", 0.0))
        share = t / total
        if share > th.op_family_share:
            out.append(_finding(f"{family}-bound", "medium",
                                f"{family} ops take {share:.0%} of the denoiser's {'device' if on_device else 'CPU'} "
                                "time", cuda=on_cuda, **{f"{f}_share": v / total for f, v in sorted(families.items())}))
    else:
        skipped["op-family"] = "the profile recorded no denoiser ops"

    if not on_cuda:
        skipped["host-device-sync, launch-bound"] = "not a CUDA profile"
        return
    steps = max(prof.denoiser_steps, 1)
    syncs = sum(n for stage, n in prof.syncs().items() if is_step_stage(stage))
    if syncs / steps >= th.syncs_per_step:
        out.append(_finding("host-device-sync", "medium",
                            f"{syncs / steps:.1f} host-device synchronisations per denoising step (made by the "
                            "pipeline, not by lab's timer) stall the GPU queue", cuda=True,
                            syncs_per_step=syncs / steps))
    busy = {stage: share for stage, share in prof.device_busy().items() if is_step_stage(stage)}
    if not busy or not prof.has_kernels:
        skipped["launch-bound"] = "the profile holds no GPU kernels"
        return
    share = sorted(busy.values())[len(busy) // 2]
    if share < th.device_busy_min:
        wall_ms = sum(s.duration_us for s in prof.spans if is_step_stage(s.stage)) / 1e3 / len(busy)
        evidence = {"gpu_busy_share": share, "kernel_ms_per_step": share * wall_ms, "wall_ms_per_step": wall_ms}
        cpu = [c.cpu_percent for c in bench.cases if c.cpu_percent is not None] if bench is not None else []
        host = f", with the host CPU at {max(cpu):.0f} %" if cpu else ""
        if cpu:
            evidence["host_cpu_percent"] = max(cpu)
        out.append(_finding("launch-bound", "high",
                            f"the GPU runs kernels only {share:.0%} of each denoising step "
                            f"({share * wall_ms:.1f} of {wall_ms:.1f} ms){host}: the host cannot launch the "
                            "kernels fast enough, so faster kernels (fp16, fused ops) change little; CUDA graphs "
                            "(compile-denoiser-reduce-overhead) replay a whole step in one launch", cuda=True, **evidence))


def diagnose(benchmark=None, *, profile=None, flops=None, ssim: float | None = None,
             thresholds: Thresholds | None = None, kind: ModelKind | None = None) -> Diagnosis:
    """Apply every rule the given measurements allow; returns a ``Diagnosis``.

    Args:
        benchmark: a ``BenchmarkResult``; profile: a ``ProfileResult``; flops: a ``FlopsReport``.
        ssim: SSIM of an optimized image against its reference, when there is one.
        kind: the model's ``lab.denoiser.ModelKind``; suggestions that cannot apply to it are dropped.
    """
    if benchmark is None and profile is None and flops is None and ssim is None:
        raise LabError("diagnose needs at least one of benchmark, profile, flops or ssim")
    th = thresholds or Thresholds()
    findings: list[Finding] = []
    skipped: dict[str, str] = {}
    if benchmark is not None:
        _benchmark_rules(benchmark, th, ssim, findings, skipped)
        _throttle_rule(benchmark, th, findings, skipped)
    elif ssim is not None and ssim < th.ssim_min:
        findings.append(_finding("quality-drop", "high", f"SSIM {ssim:.3f} is below {th.ssim_min}", ssim=ssim))
    if profile is not None:
        _profile_rules(profile, th, benchmark, findings, skipped)
    else:
        skipped["op-family, host-device-sync, launch-bound"] = "no profile given"
    contended = next((f for f in findings if f.rule == "host-contention"), None)
    if flops is not None and contended is not None:
        skipped["low-utilisation"] = "withheld: the benchmark was measured under host contention"
    elif flops is not None:
        step = flops.stage("denoiser")
        cuda = flops.peak.device.startswith("cuda")
        if step.utilisation_pct is None:
            findings.append(_finding("peak-unreliable", "info",
                                     f"the denoiser achieved more than the measured {flops.peak.dtype} matmul peak, "
                                     "so the peak under-reads and no utilisation is reported: measure it again on "
                                     "a quiet machine", achieved_gflops_per_s=step.achieved_flops_per_s / 1e9,
                                     peak_gflops_per_s=flops.peak.flops_per_s / 1e9))
        elif step.utilisation_pct < th.utilisation_min_pct:
            findings.append(_finding("low-utilisation", "medium",
                                     f"the denoiser reaches {step.utilisation_pct:.1f}% of the measured "
                                     f"{flops.peak.dtype} matmul peak", cuda=cuda,
                                     utilisation_pct=step.utilisation_pct,
                                     achieved_gflops_per_s=step.achieved_flops_per_s / 1e9,
                                     peak_gflops_per_s=flops.peak.flops_per_s / 1e9))
    else:
        skipped["low-utilisation"] = "no FLOPs report given"
    findings.sort(key=lambda f: SEVERITIES.index(f.severity))
    if kind is not None:
        from .recipes import parse

        for f in findings:
            f.suggest = [name for name in f.suggest if not parse(name).fits(kind)]
    return Diagnosis(findings=findings, skipped=skipped, thresholds=th)
