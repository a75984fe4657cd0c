"""One-call GPU verification: peaks, diagnosis, ladders and the targets they are held to, in one JSON + Markdown.

``python benchmarks/gpu_check.py --out DIR`` on one H100/H200 (``--smoke``: a few seconds' version on CPU, for
CI). Sections run in order and each is timed; one that fails is recorded with its error and the rest go on.
The summary is rewritten after every section, so an interrupted check keeps what finished.

Targets (issue "GPU truth"): ``measure_peak`` within 10 % of an independent 8192³ timing; no utilisation over
100 %; on the launch-bound eager fp16 sd15-arch case ``diagnose`` names CUDA graphs first; sd15-arch 512², 30
steps: best rung without fewer steps ≥ 5× over fp32 eager and UNet ≥ 35 % of the fp16/bf16 peak; sdxl-arch
1024², 30 steps: ≥ 7.5× and ≥ 55 %; flux-arch (FLUX.1-dev's transformer) 1024², 28 steps, guidance 3.5: best rung
≥ 3× over bf16 eager without fewer steps (flux-fast's published anchor on an H100: about 2.5× with bf16, compile,
fused QKV, FA3, float8 and CUDA graphs), each compiled rung's first call recorded. Every rung's energy per
image and mean power come from NVML's total-energy counter (``energy``); the smoke says why a CPU has none.
fused QKV, FA3, float8 and CUDA graphs), each compiled rung's first call recorded; flux-arch's best rung with a
cache (first-block cache) ≥ 5× over bf16 eager, its trajectory fidelity against bf16 eager reported beside it;
sdxl-arch with Pyramid Attention Broadcast (no target: its speed-up and trajectory are reported).
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field

from .results import Record, atomic_write_text


@dataclass
class Target(Record):
    name: str
    threshold: float
    value: float | None = None
    status: str = "not measured"  # met | missed | not measured

    def judge(self, value: float | None, higher_is_better: bool = True) -> "Target":
        self.value = value
        if value is not None:
            self.status = "met" if (value >= self.threshold if higher_is_better else value <= self.threshold) \
                else "missed"
        return self


@dataclass
class GpuCheck(Record):
    out: str
    smoke: bool
    env: dict = field(default_factory=dict)
    peaks: list[dict] = field(default_factory=list)
    diagnosis: dict = field(default_factory=dict)
    ladders: dict[str, dict] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    energy: list[dict] = field(default_factory=list)  # per ladder rung: J/image and W from NVML, or why not
    options: dict[str, dict] = field(default_factory=dict)  # issue 19's diffusers options (group offload, ...)

    def to_markdown(self) -> str:
        import pandas as pd

        lines = [f"# GPU check{' (smoke, CPU)' if self.smoke else ''}", "",
                 f"{self.env.get('device_name', '?')}, torch {self.env.get('packages', {}).get('torch', '?')}, "
                 f"CUDA {self.env.get('cuda_version')}, commit {self.env.get('git_commit')}; "
                 f"{sum(self.seconds.values()):.0f} s in all", "", "## Targets", ""]
        lines.append(pd.DataFrame([t.to_dict() for t in self.targets]).to_markdown(index=False)
                     if self.targets else "(none measured)")
        if self.peaks:
            lines += ["", "## Matmul peaks (TFLOP/s)", "", pd.DataFrame(self.peaks).round(3).to_markdown(index=False)]
        if self.diagnosis:
            lines += ["", "## Diagnosis (eager)", "", self.diagnosis.get("markdown", "")]
        for name, ladder in self.ladders.items():
            lines += ["", f"## Ladder: {name}", "", ladder.get("markdown", "")]
        if self.energy:
            readable = [e for e in self.energy if e.get("j_per_image") is not None]
            lines += ["", "## Energy per image (lab.power)", ""]
            lines.append(pd.DataFrame(readable).round(3).to_markdown(index=False) if readable else
                         "Not measured: " + "; ".join(sorted({e.get("note") or "" for e in self.energy})))
        for name, table in self.options.items():
            lines += ["", f"## {name}", "", table.get("markdown", "")]
        lines += ["", "## Time per section (s)", "", "\n".join(f"- {k}: {v:.1f}" for k, v in self.seconds.items())]
        if self.errors:
            lines += ["", "## Errors", ""] + [f"- {k}: {v.splitlines()[-1] if v else ''}" for k, v in self.errors.items()]
        return "\n".join(lines) + "\n"


def independent_matmul_tflops(device: str, dtype: str, n: int = 8192, products: int = 20) -> float:
    """TFLOP/s of ``products`` back-to-back n³ products between two synchronisations: a plain cross-check."""
    import torch

    from .env import synchronize, torch_dtype

    a = torch.randn(n, n, device=device, dtype=torch_dtype(dtype))
    b = torch.randn(n, n, device=device, dtype=torch_dtype(dtype))
    torch.mm(a, b)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(products):
        torch.mm(a, b)
    synchronize(device)
    return 2 * n**3 * products / (time.perf_counter() - start) / 1e12


def energy_rows(ladder: str, out) -> list[dict]:
    """Energy per image and mean power of each rung's runs in a ladder's folder (NVML on a GPU), or why not."""
    from .experiments import Comparison

    rows = []
    for r in Comparison.load(out).records:
        if r.status != "ok":
            continue
        e = r.energy
        rows.append({"ladder": ladder, "recipe": r.recipe, "source": e.source if e else None,
                     "j_per_image": e.joules_per_image if e else None, "mean_w": e.mean_watts if e else None,
                     "note": e.note if e else "no energy recorded"})
    return rows


def _best(ladder) -> tuple[float | None, float | None]:
    """The fastest rung without fewer steps and without a cache (a cache has its own target: it changes the image)."""
    from .recipes import caches, parse

    ok = [r for r in ladder.rungs if r.status == "ok" and not r.fewer_steps and not caches.is_cache(parse(r.recipe))]
    best = min(ok, key=lambda r: r.latency_s) if ok else None
    return (best.speedup, best.utilisation_pct) if best else (None, None)


def run_gpu_check(out: str | os.PathLike, *, smoke: bool = False, device: str = "auto",
                  progress: bool = True) -> GpuCheck:
    """Run every section (see the module docstring); writes ``gpu_check.json`` and ``gpu_check.md`` under ``out``."""
    from . import recipes
    from ._checks import writable_dir
    from .env import Environment, RecipeEnv
    from .flops import measure_peak, peak_dtypes
    from .experiments import compare as lab_compare
    from .ladder import CASE, run_ladder
    from .workflows import diagnose_run

    env = RecipeEnv.detect(device)
    if not env.cuda and not smoke:
        from ._checks import LabError

        raise LabError(f"the GPU check needs a CUDA device (this is {env.device}); --smoke runs its CPU version")
    out = writable_dir(out)
    check = GpuCheck(out=str(out), smoke=smoke, env=Environment.capture(env.device).to_dict())
    half = "fp16" if env.cuda else "bf16"  # fp16 matmuls are emulated on a CPU: the smoke would take minutes
    targets = {t.name: t for t in (
        Target(f"measure_peak / independent 8192³ ({half})", 0.9),
        Target("highest utilisation reported anywhere (%)", 100.0),
        Target("diagnose names CUDA graphs first (1 = yes)", 1.0),
        Target("sd15-arch best rung without fewer steps (x fp32)", 5.0),
        Target("sd15-arch UNet utilisation on that rung (%)", 35.0),
        Target("sdxl-arch best rung (x fp32)", 7.5),
        Target("sdxl-arch UNet utilisation on that rung (%)", 55.0),
        Target("flux-arch best rung (x bf16 eager)", 3.0),
        Target("flux-arch best rung with a cache (x bf16 eager)", 5.0),
    )}
    check.targets = list(targets.values())
    utilisations: list[float] = []
    measured = {}  # dtype -> Peak: measured once, so every utilisation is judged against the peaks reported

    def save() -> None:
        check.save(out / "gpu_check.json")
        atomic_write_text(out / "gpu_check.md", check.to_markdown())

    def section(name: str, fn) -> None:
        start = time.perf_counter()
        try:
            fn()
        except Exception as err:  # one failing section never loses the others
            check.errors[name] = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
        check.seconds[name] = time.perf_counter() - start
        if progress:
            print(f"[gpu check] {name}: {check.seconds[name]:.0f} s{' (failed)' if name in check.errors else ''}",
                  flush=True)
        save()

    def peaks() -> None:
        for dtype in peak_dtypes(env.device, env.cuda_capability):
            peak = measured[dtype] = measure_peak(env.device, dtype, sizes=(256, 512) if smoke else None)
            row = {"dtype": dtype, "measure_peak": peak.flops_per_s / 1e12, "size": peak.size,
                   "products_per_sync": peak.products}
            if dtype in ("fp16", "bf16"):
                row["independent_8192"] = independent_matmul_tflops(env.device, dtype, n=512 if smoke else 8192,
                                                                    products=5 if smoke else 20)
                row["ratio"] = row["measure_peak"] / row["independent_8192"]
            check.peaks.append(row)
        ratio = next((r["ratio"] for r in check.peaks if r["dtype"] == half and "ratio" in r), None)
        if env.cuda:  # the targets are a GPU's; the smoke only shows the machinery works
            targets[f"measure_peak / independent 8192³ ({half})"].judge(ratio)

    def diagnosis() -> None:
        model, size, steps = ("tiny", 64, 2) if smoke else ("sd15-arch", 512, 30)
        case = CASE.with_overrides(steps=steps, height=size, width=size)
        run = diagnose_run(model, case, out=out / "diagnose", dtype=half, device=env.device,
                           repeats=1 if smoke else 3, progress=progress, peaks=measured)
        d = run.diagnosis
        first = d.findings[0] if d.findings else None
        check.diagnosis = {"rules": d.rules, "first_suggestion": first.suggest[0] if first and first.suggest else None,
                           "markdown": d.to_markdown()}
        utilisations.extend(s.utilisation_pct for s in run.flops.stages if s.utilisation_pct is not None)
        if env.cuda:
            named = float(check.diagnosis["first_suggestion"] == "compile-denoiser-reduce-overhead")
            targets["diagnose names CUDA graphs first (1 = yes)"].judge(named)

    def ladder(name: str, model: str, size: int, speed: str, util: str | None, plan=None, steps: int = 30,
               guidance: float | None = None, repeats: int = 3, cached_speed: str | None = None) -> None:
        result = run_ladder(model, size=size, steps=2 if smoke else steps, repeats=1 if smoke else repeats,
                            device=env.device, out=out / f"ladder-{name}", plan=plan, fewer_steps_rung=False,
                            progress=progress, peaks=measured, guidance=guidance)
        check.ladders[name] = {"markdown": result.to_markdown(), "json": str(out / f"ladder-{name}" / "ladder.json")}
        check.energy += energy_rows(name, out / f"ladder-{name}")
        utilisations.extend(r.utilisation_pct for r in result.rungs if r.utilisation_pct is not None)
        if env.cuda:
            speedup, utilisation = _best(result)
            targets[speed].judge(speedup)
            if cached_speed is not None:  # the best rung with a cache (its trajectory fidelity is in the ladder)
                from .recipes import caches

                cached = [r.speedup for r in result.rungs
                          if r.status == "ok" and r.speedup and caches.is_cache(recipes.parse(r.recipe))]
                targets[cached_speed].judge(max(cached, default=None))
            if util is not None:  # flux-arch: utilisation is reported in its ladder, no target set for it yet
                targets[util].judge(utilisation)

    graphs = "compile-denoiser-reduce-overhead"
    sd15_plan = [("fp32", "fp32"), (half, half), ("+ SDPA, channels-last", f"{half}+sdpa+channels-last"),
                 ("+ CUDA graphs", f"{half}+sdpa+channels-last+{graphs}"),
                 ("+ CUDA graphs, tuned inductor", f"{half}+sdpa+channels-last+compile-denoiser-tuned")]
    if recipes.get("torchao-fp8dq").check(env) is None:
        sd15_plan.append(("bf16 + float8 (torchao) + CUDA graphs", f"bf16+sdpa+channels-last+torchao-fp8dq+{graphs}"))
    sdxl_plan = [("fp32", "fp32"), ("bf16 + SDPA", "bf16+sdpa"),
                 ("+ channels-last + CUDA graphs", f"bf16+sdpa+channels-last+{graphs}")]
    # sdxl-arch gets CUDA graphs without the tuned settings: both compiles would take the check past 9 minutes
    # FLUX.1 runs in bf16 (fp32 would not fit beside T5-XXL, fp16 overflows): bf16 eager is the baseline; each rung
    # adds one technique the flux-fast recipe uses, regional compile (repeated blocks) before whole-model graphs
    flux_plan = [("bf16 eager", "bf16+sdpa"), ("+ fused QKV", "bf16+sdpa+fused-qkv"),
                 ("+ regional compile", "bf16+sdpa+fused-qkv+compile-denoiser-regional"),
                 ("+ CUDA graphs", f"bf16+sdpa+fused-qkv+{graphs}")]
    if recipes.get("torchao-fp8dq").check(env) is None:
        flux_plan.append(("+ float8 (torchao)", f"bf16+sdpa+fused-qkv+torchao-fp8dq+{graphs}"))
    # caches (issue 19): PAB on the SDXL UNet through diffusers' hook; on FLUX.1 a first-block cache (diffusers'
    # suggested threshold for it) eagerly and on the fastest rung, each with its trajectory against bf16 eager
    sdxl_cache = [("+ PAB (attention reused 1 step in 2)", "bf16+sdpa+pab-2")]
    flux_cache = [("+ first-block cache", "bf16+sdpa+fused-qkv+first-block-cache-0.08"),
                  ("+ first-block cache on CUDA graphs", f"{flux_plan[-1][1]}+first-block-cache-0.08")]
    if smoke:  # no compile on CI's CPU: the compile recipes have their own tests
        sd15_plan, sdxl_plan, flux_plan = sd15_plan[:3], sdxl_plan[:2], flux_plan[:2]
        flux_cache = flux_cache[:1]
    # issue 19: float8 storage (diffusers layerwise casting) with the fastest attention backend this machine runs
    best_attention = recipes.attention.best_backend(env)
    flux_plan.append((f"bf16 + float8 layerwise + {best_attention}", f"bf16+{best_attention}+layerwise-fp8-denoiser"))

    sdxl_plan, flux_plan = sdxl_plan + sdxl_cache, flux_plan + flux_cache

    def group_offload() -> None:
        model, size = ("tiny-sdxl", 64) if smoke else ("sdxl-arch", 1024)
        case = CASE.with_overrides(steps=2 if smoke else 4, height=size, width=size)
        names = ["bf16+sdpa", *(f"bf16+sdpa+{r}" for r in recipes.memory.GROUP_OFFLOAD)]
        cmp = lab_compare(model, names, case, repeats=1, warmup=1, out=out / "group-offload", device=env.device,
                          progress=progress)
        frame = cmp.to_frame()
        columns = [c for c in ("status", "latency_s", "peak_mem_mb", "weight_mb", "ssim", "reason") if c in frame]
        check.options[f"Group offload: {model} {size}², {case.steps} steps (peak memory)"] = {
            "markdown": frame[columns].round(3).to_markdown(), "json": str(out / "group-offload")}
    section("peaks", peaks)
    section("diagnose", diagnosis)
    section("ladder sd15-arch", lambda: ladder("sd15", "tiny" if smoke else "sd15-arch", 64 if smoke else 512,
                                                "sd15-arch best rung without fewer steps (x fp32)",
                                                "sd15-arch UNet utilisation on that rung (%)", sd15_plan))
    section("ladder sdxl-arch", lambda: ladder("sdxl", "tiny-sdxl" if smoke else "sdxl-arch", 64 if smoke else 1024,
                                                "sdxl-arch best rung (x fp32)",
                                                "sdxl-arch UNet utilisation on that rung (%)", sdxl_plan))
    section("ladder flux-arch", lambda: ladder("flux", "tiny-flux" if smoke else "flux-arch", 64 if smoke else 1024,
                                                "flux-arch best rung (x bf16 eager)", None, flux_plan,
                                                steps=28, guidance=3.5, repeats=2,
                                                cached_speed="flux-arch best rung with a cache (x bf16 eager)"))
    section("group offload sdxl-arch", group_offload)
    targets["highest utilisation reported anywhere (%)"].judge(max(utilisations, default=None),
                                                               higher_is_better=False)
    save()
    return check
