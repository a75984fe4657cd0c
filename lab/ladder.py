"""The performance ladder: cumulative recipes on one case, each rung against fp32 and the hardware limit.

Each rung adds one technique to the previous rung: fp32 → fp16 on CUDA (bf16 on CPU) → SDPA →
channels-last → compile → fused QKV → quanto int8 weights → int8 weights + activations (without fused QKV,
which quanto's activations cannot split) → fewer steps with a better scheduler; then the same fewer steps
on the fastest rung before it (the cumulative last rung inherits every rung that lost time). On CUDA the
compile rung is CUDA graphs (``compile-denoiser-reduce-overhead``: an eager denoiser is launch-bound there) and,
where torchao and an sm89+ GPU allow, a float8 rung follows it; on CPU it freezes the weights into the
graph (``compile-denoiser-frozen``). On a transformer model (Flux, SD3.5) there is no channels-last rung (no
convolutions to lay out) and the fewer-steps rung keeps the model's flow-matching scheduler. Per rung: latency,
speed-up over fp32, denoiser ms per step, achieved TFLOP/s
and utilisation against the measured matmul peak in the rung's dtype (never above 100 %: flagged instead),
peak memory, SSIM against the fp32 image (meaningful on a trained model only) and the first-step fidelity
against fp32 (meaningful everywhere; ``lab.fidelity``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .cases import Case
from .flops import Peak, utilisation
from .results import Record, atomic_write_text

CASE = Case("a photo of an astronaut riding a horse on mars", name="astronaut")


def fewer(steps: int) -> int:
    """The step count of the ladder's fewer-steps rungs."""
    return max(1, steps // 2)


def fewer_steps(recipe: str, steps: int, flow: bool = False) -> str:
    """``recipe`` with the ladder's fewer-steps rung added (DPM-Solver++ Karras, or the model's own flow scheduler)."""
    return f"{recipe}+steps-{fewer(steps)}" if flow else f"{recipe}+dpmpp-2m-karras+steps-{fewer(steps)}"


def rungs(precision: str, steps: int, compile_recipe: str = "compile-denoiser", fp8: bool = False,
          transformer: bool = False) -> list[tuple[str, str]]:
    """(label, cumulative recipe string) per rung; ``transformer``: a Flux/SD3 model (no layout rung, flow steps)."""
    parts: list[str] = []
    out = [("fp32", "fp32")]
    compiled = ""
    layout = () if transformer else (("+ channels-last", "channels-last"),)
    for label, add in ((precision, precision), ("+ SDPA", "sdpa"), *layout,
                       ("+ compile", compile_recipe), ("+ fused QKV", "fused-qkv"),
                       ("+ quanto int8 weights", "quanto-denoiser-int8w")):
        parts.append(add)
        out.append((label, "+".join(parts)))
        if add == compile_recipe:
            compiled = "+".join(parts)
            if fp8:  # float8 tensor cores need bf16 activations with per-row scales
                out.append(("float8 (torchao) on the compile rung, bf16",
                            compiled.replace(precision, "bf16", 1) + "+torchao-fp8dq"))
    w8a8 = [p if p != "quanto-denoiser-int8w" else "quanto-denoiser-int8w-int8a" for p in parts if p != "fused-qkv"]
    out.append(("int8 weights + activations (no fused QKV)", "+".join(w8a8)))
    out.append((f"+ {'' if transformer else 'DPM-Solver++ Karras, '}{fewer(steps)} steps",
                fewer_steps("+".join(parts), steps, flow=transformer)))
    return out


@dataclass
class Rung(Record):
    label: str
    recipe: str
    status: str
    error: str | None = None
    latency_s: float | None = None
    speedup: float | None = None  # the baseline rung's latency ÷ this rung's (fp32 unless a plan starts elsewhere)
    first_call_s: float | None = None
    denoiser_ms_per_step: float | None = None
    denoiser_tflops: float | None = None
    utilisation_pct: float | None = None  # None: not ok, or above the measured peak (flagged)
    peak_dtype: str | None = None
    peak_mem_mb: float | None = None
    ssim: float | None = None
    fidelity_cosine: float | None = None
    fidelity_rel_error: float | None = None
    fewer_steps: bool = False
    trajectory_rel_error: float | None = None  # the final latent against the first rung's (lab.trajectory)
    cache_skipped: float | None = None  # share of block/attention evaluations a cache skipped

    renamed = {"unet_ms_per_step": "denoiser_ms_per_step", "unet_tflops": "denoiser_tflops"}


@dataclass
class LadderResult(Record):
    """Every rung of a ladder, with the peaks, the case and the environment it ran in."""

    model: str
    size: int
    steps: int
    repeats: int
    batch: int
    step_flops: int  # one denoiser forward (lab.denoiser)
    peaks: dict[str, Peak]
    rungs: list[Rung]
    out: str
    env: dict = field(default_factory=dict)
    ssim_meaningful: bool = True
    notes: list[str] = field(default_factory=list)
    baseline: str = "fp32"  # the first rung's recipe: every speed-up is against it

    renamed = {"unet_step_flops": "step_flops"}

    def best(self, fewer_steps: bool = False) -> Rung | None:
        """The fastest rung that ran (with or without the fewer-steps rungs)."""
        ok = [r for r in self.rungs if r.status == "ok" and (fewer_steps or not r.fewer_steps)]
        return min(ok, key=lambda r: r.latency_s) if ok else None

    def to_frame(self):
        import pandas as pd

        cols = ["rung", "latency_s", "speedup", "denoiser_ms_per_step", "denoiser_tflops", "utilisation_pct",
                "peak_mem_mb", "ssim", "fidelity_cosine", "status"]
        rows = [{"rung": r.label, **{c: getattr(r, c) for c in cols[1:]}} for r in self.rungs]
        frame = pd.DataFrame(rows, columns=cols).set_index("rung")
        for extra in ("cache_skipped", "trajectory_rel_error"):  # rungs with a cache (issue 19)
            if any(getattr(r, extra) is not None for r in self.rungs):
                frame.insert(len(frame.columns) - 1, extra, [getattr(r, extra) for r in self.rungs])
        if not self.ssim_meaningful:
            frame = frame.drop(columns="ssim")
        return frame

    def to_markdown(self) -> str:
        frame = self.to_frame().round(3)
        for r in self.rungs:  # say why a rung has no numbers
            if r.status != "ok":
                frame.loc[r.label, "status"] = f"{r.status}: {(r.error or '')[:80]}"
        peaks = ", ".join(f"{k} {v.flops_per_s / 1e12:.3g} TFLOP/s (n={v.size})" for k, v in self.peaks.items())
        text = (frame.to_markdown() + f"\n\n{self.model}, {self.size}², {self.steps} steps, batch {self.batch}"
                f"{' (CFG)' if self.batch == 2 else ''}, median of {self.repeats} after 1 warm-up; denoiser "
                f"{self.step_flops / 1e12:.3f} TFLOP per step; "
                f"measured peaks: {peaks}; {self.env.get('device_name', '')}, torch "
                f"{self.env.get('packages', {}).get('torch', '')}, commit {self.env.get('git_commit', '')}")
        return text + "".join(f"\n\n{n}" for n in self.notes)

    def _repr_markdown_(self) -> str:
        return self.to_markdown()


def _dtype(recipe: str) -> str:
    """The matmul dtype a rung's denoiser runs in: the peak its utilisation is measured against."""
    parts = recipe.split("+")
    if "torchao-fp8dq" in parts:
        return "fp8"
    return next((p for p in parts if p in ("fp32", "fp16", "bf16")), "fp32")  # compare loads in fp32


def run_ladder(model: str = "sd15-arch", *, size: int = 256, steps: int = 4, repeats: int = 3,
               device: str = "auto", out: str | os.PathLike | None = None, smoke: bool = False,
               plan: list[tuple[str, str]] | None = None, fewer_steps_rung: bool = True,
               progress: bool = True, peaks: dict[str, Peak] | None = None,
               guidance: float | None = None, isolate: bool | None = None) -> LadderResult:
    """Run the ladder (resumable: re-running with the same ``out`` skips finished rungs); writes ladder.json/md.

    Args:
        smoke: tiny (or ``model`` when it is tiny-flux), 1 repeat, 2 steps and regional compile (what CI runs: cold
            whole-denoiser compiles cost minutes).
        plan: (label, recipe) rungs to run instead of the standard ones; the first is the baseline every speed-up
            is against (``fp32`` in the standard ladder; bf16 eager for FLUX.1, whose fp32 run would not fit).
        guidance: the case's guidance scale (None: the ladder case's; FLUX.1-dev is run at 3.5).
        fewer_steps_rung: add the fewer-steps rung on the fastest rung (one more compile when that rung compiles).
        peaks: matmul peaks by dtype already measured on this device; the ones missing are measured here.
        isolate: each rung in its own worker with cold compile caches (default, as in ``compare``), so no rung
            inherits another's compiled kernels or inductor settings.
    """
    import json

    from . import recipes
    from .env import RecipeEnv
    from .experiments import compare
    from .denoiser import model_kind
    from .flops import measure_peak, step_batch, step_flops
    from .models import EMBEDDED, build_embedded, load_model

    if smoke:
        model, size, steps, repeats = (model if model == "tiny-flux" else "tiny"), 64, 2, 1
    out = Path(out or Path("runs") / f"ladder-{Path(model).name}-{size}")
    env = RecipeEnv.detect(device)
    kind = model_kind(model)
    transformer = kind is not None and kind.denoiser == "transformer"
    # FLUX.1 and SD3.5 run in bf16 (their published dtype; fp16 overflows in their activations)
    precision = "fp16" if env.cuda and not transformer else "bf16"
    compile_recipe = ("compile-denoiser-regional" if smoke else "compile-denoiser-reduce-overhead" if env.cuda
                      else "compile-denoiser-frozen")
    fp8 = not smoke and recipes.get("torchao-fp8dq").check(env) is None
    ladder = list(plan) if plan else rungs(precision, steps, compile_recipe, fp8=fp8, transformer=transformer)
    standard = plan is None
    case = CASE.with_overrides(steps=steps, height=size, width=size,
                               **({"guidance": guidance} if guidance is not None else {}))

    def run():
        return compare(model, [recipe for _, recipe in ladder], [case], repeats=repeats, warmup=1, out=out,
                       device=env.device, progress=progress, isolate=isolate)

    cmp = run()
    timed = [(cmp.record(recipe, case.name), label) for label, recipe in (ladder[:-2] if standard else ladder)]
    fastest = min(((r, label) for r, label in timed if r.status == "ok"), key=lambda pair: pair[0].latency.median,
                  default=None)
    shorter = fewer_steps(fastest[0].recipe, steps, transformer) if fastest else None
    if fewer_steps_rung and shorter and shorter not in {r for _, r in ladder}:
        scheduler = "" if transformer else " + DPM-Solver++ Karras,"
        ladder.append((f"{fastest[1]} (fastest rung){scheduler} {fewer(steps)} steps", shorter))
        cmp = run()  # the runner resumes from results.jsonl: only the new rung runs

    # FLOPs are counted on the meta device: no weights needed
    pipe = build_embedded(model, empty=True) if model in EMBEDDED else load_model(model, device="cpu")
    batch = step_batch(pipe, case.guidance)
    flops_per_step = step_flops(pipe, size, size, batch)["total"]
    del pipe
    given = peaks or {}
    peaks = {dt: given.get(dt) or measure_peak(env.device, dt) for dt in dict.fromkeys(_dtype(r) for _, r in ladder)}
    from .recipes.caches import skipped_fraction

    base = cmp.record(ladder[0][1], case.name)
    result_rungs, over = [], []
    for label, recipe in ladder:
        rec = cmp.record(recipe, case.name)
        rung = Rung(label=label, recipe=recipe, status=rec.status, error=rec.error,
                    fewer_steps="steps-" in recipe)
        if rec.status == "ok":
            dtype = _dtype(recipe)
            peak = peaks[dtype]
            step_s = rec.stages.denoiser_per_step
            achieved = flops_per_step / step_s
            rung.latency_s, rung.first_call_s = rec.latency.median, rec.first_call_s
            rung.speedup = base.latency.median / rec.latency.median if base.status == "ok" else None
            rung.denoiser_ms_per_step, rung.denoiser_tflops = step_s * 1e3, achieved / 1e12
            rung.utilisation_pct, rung.peak_dtype = utilisation(achieved, peak), dtype
            if rung.utilisation_pct is None:
                over.append(label)
            rung.peak_mem_mb = rec.peak_mem_mb
            rung.ssim = rec.ssim
            if rec.fidelity is not None:
                rung.fidelity_cosine, rung.fidelity_rel_error = rec.fidelity.cosine, rec.fidelity.rel_error
            if rec.trajectory is not None:
                rung.trajectory_rel_error = rec.trajectory.final_rel_error
            rung.cache_skipped = skipped_fraction(rec.cache_skips)
        result_rungs.append(rung)
    notes = []
    random_weights = cmp.random_weights
    if random_weights:
        notes.append(f"{model} has random weights: image SSIM against {ladder[0][1]} says nothing about a recipe "
                     "(the trajectories diverge), so it is left out; fidelity_cosine compares the first denoising "
                     f"step's update with {ladder[0][1]}'s on identical inputs instead")
    if over:
        notes.append(f"peak unreliable: {', '.join(over)} achieved more than the measured peak; no utilisation "
                     "is reported for them")
    result = LadderResult(model=model, size=size, steps=steps, repeats=repeats, batch=batch,
                          step_flops=flops_per_step, peaks=peaks, rungs=result_rungs, out=str(out),
                          env=json.loads((out / "environment.json").read_text()), ssim_meaningful=not random_weights,
                          notes=notes, baseline=ladder[0][1])
    result.save(out / "ladder.json")
    atomic_write_text(out / "ladder.md", result.to_markdown() + "\n")
    return result
