"""Optimisation tiers (seed 002 §3) and the hardware decision tree (seed 002 §2), corrected.

Corrections to the seed: attention slicing is not combined with SDPA (it slows SDPA down); sequential
offload is never combined with ``torch.compile`` (it cannot be traced); bitsandbytes 4-bit and LCM-LoRA
need CUDA and downloaded weights respectively, so the CPU branches use what runs here (bf16 with AMX
or AVX-512 BF16, channels-last, compile, quanto); GGUF (the seed's CPU branch) is outside diffusers, so the
fixed CPU branch names the nearest equivalents. Given a measured
comparison (``measured=``: e.g. lab's best rung against the OpenVINO and ONNX Runtime denoisers of
``lab.recipes.runtimes``), the CPU branch picks the fastest measured recipe within the quality bound instead of the
fixed rule; given a batch sweep (``throughput=``, ``lab.batch_sweep``), ``priority="throughput"`` picks its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._checks import LabError, choose
from .env import RecipeEnv
from .denoiser import model_kind
from .recipes import fit_to_model, parse
from .results import Record

if TYPE_CHECKING:
    from .experiments import Comparison
    from .throughput import ThroughputResult

PRIORITIES = ("quality", "balance", "speed", "throughput")
MAX_REL_ERROR = 0.05  # first-step relative error against the baseline a measured pick may have (lab.fidelity)
SSIM_MIN = 0.85  # the report's quality gate, for recipes without a first-step fidelity on a trained model
TIERS = ("basic", "advanced", "expert")


def _precision(env: RecipeEnv) -> tuple[str, str]:
    if env.cuda:
        return "fp16", "fp16 halves memory and uses tensor cores on any CUDA GPU"
    if env.cpu_bf16:
        return "bf16", f"this CPU has native bf16 matmul ({', '.join(f for f in env.cpu_flags if 'bf16' in f)})"
    return "fp32", "this CPU has no native bf16 matmul: lower precision would be emulated and slower"


def preset(tier: str, env: RecipeEnv | None = None, model: str | None = None) -> str:
    """The recipe string of a tier on this hardware (``basic`` / ``advanced`` / ``expert``), fitted to ``model``
    when given (a transformer model drops the UNet-only parts: ``lab.recipes.fit_to_model``)."""
    text = _tier(choose("tier", tier, TIERS), env or RecipeEnv.detect())
    if model is None:
        return text
    return "+".join(fit_to_model(text.split("+"), model_kind(model))[0])


def _tier(tier: str, env: RecipeEnv) -> str:
    precision, _ = _precision(env)
    if tier == "basic":
        return f"{precision}+sdpa+vae-slicing+euler"
    if tier == "advanced":
        if not env.cuda:  # quanto's int8 path has no fast CPU kernel: it saves memory but costs time here
            return f"{precision}+sdpa+channels-last+dpmpp-2m-karras+steps-20"
        memory = "+model-cpu-offload" if (env.cuda_memory_gb or 0) < 16 else ""
        return f"{precision}+sdpa+channels-last+quanto-denoiser-int8w+dpmpp-2m-karras+steps-20{memory}"
    if env.cuda:  # what the H100 evidence supports: CUDA graphs on channels-last; fused QKV and VAE compile unmeasured
        return f"{precision}+sdpa+channels-last+compile-denoiser-reduce-overhead+dpmpp-2m-karras+steps-20"
    return f"{precision}+sdpa+channels-last+compile-denoiser+compile-vae+dpmpp-2m-karras+steps-20"


@dataclass
class Recommendation(Record):
    recipe: str
    reasons: list[str] = field(default_factory=list)
    not_applicable: dict[str, str] = field(default_factory=dict)
    batch: int | None = None  # images per call (priority "throughput" with a measured sweep)

    def __str__(self) -> str:
        batch = f" at {self.batch} images per call" if self.batch else ""
        lines = [f"recommended: {self.recipe}{batch}"] + [f"  - {r}" for r in self.reasons]
        lines += [f"  ! {k} cannot apply here: {v}" for k, v in self.not_applicable.items()]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return f"**`{self.recipe}`**\n\n" + "\n".join(f"- {r}" for r in self.reasons)


def measured_pick(measured: "Comparison", max_rel_error: float = MAX_REL_ERROR,
                  ssim_min: float = SSIM_MIN) -> tuple[str | None, list[str]]:
    """The fastest recipe of a comparison within the quality bound, and one line per recipe saying why or why not.

    The bound: a first-step relative error against the baseline of at most ``max_rel_error`` (``lab.fidelity``);
    a recipe without one (it changes the scheduler or steps) passes on a trained model with SSIM > ``ssim_min``
    and is left out on a random-weight model, where neither says anything. The baseline always passes; another
    recipe only with a ``faster`` verdict against it (``Comparison.verdicts``: where the baseline drifted, one that
    holds against both of its measurements), and nothing is picked from a comparison measured under contention.
    """
    frame = measured.to_frame()
    passing, lines = [], []
    if busy := measured.busy:
        return None, [f"measured under contention ({busy}): no pick from these timings; rerun on a quiet host"]
    if drift := measured.drift:
        lines.append(f"{drift}: a recipe counts as faster only where it is faster against both baseline measurements")
    verdicts = measured.verdicts()
    for recipe, row in frame.iterrows():
        latency = row.get("latency_s")
        if latency is None or not isinstance(latency, float) or math.isnan(latency):
            lines.append(f"{recipe}: not measured ({row.get('reason') or row.get('status')})")
            continue
        rel = row.get("fidelity_rel_err")
        ssim = row.get("ssim")
        if recipe == measured.baseline:
            ok, quality = True, "the baseline"
        elif rel is not None and not math.isnan(rel):
            ok, quality = rel <= max_rel_error, f"first-step rel. error {rel:.3f} (bound {max_rel_error:g})"
        elif not measured.random_weights and ssim is not None and not math.isnan(ssim):
            ok, quality = ssim > ssim_min, f"SSIM {ssim:.3f} (gate {ssim_min:g})"
        else:
            ok, quality = False, "quality unknown (no first-step fidelity, random weights)"
        if ok and recipe != measured.baseline and verdicts.get(recipe) and verdicts[recipe].verdict != "faster":
            ok, quality = False, f"{quality}; not faster than the baseline ({verdicts[recipe].text()})"
        lines.append(f"{recipe}: {latency:.3f} s, {quality}{'' if ok else ': out'}")
        if ok:
            passing.append((latency, recipe))
    return (min(passing)[1] if passing else None), lines


def _throughput_pick(sweep: "ThroughputResult", budget_gb: float | None) -> tuple[int | None, list[str]]:
    budget_mb = budget_gb * 1024 if budget_gb is not None else None
    best = sweep.best(budget_mb)
    if best is None:
        return None, [f"the batch sweep ({sweep.model}, {sweep.recipe}) has no batch within "
                      f"{'the budget' if budget_mb else 'its runs'}"]
    from .throughput import batch_gain

    single = next((p for p in sweep.ok() if p.images == 1), None)
    gain = ""
    if single and best is not single:
        v = batch_gain(single, best)
        gain = (f", {v.speedup:.2f}x batch 1's {single.images_per_s:.3g} (interval {v.low:.2f}-{v.high:.2f})"
                if v.verdict == "faster" else f"; against batch 1: {v.text()}")
    lines = [f"measured batch sweep ({sweep.model}, {sweep.size or 'default'}², {sweep.steps} steps): "
             f"{best.prompts} prompts x {best.images_per_prompt} images per call gave the most throughput, "
             f"{best.images_per_s:.3g} images/s (IQR {best.images_per_s_iqr:.2g}){gain}; "
             f"{best.latency.median:.2f} s per call, peak {best.peak_mem_mb:.0f} MiB"]
    if budget_mb is not None:
        fit = sweep.largest_fit(budget_mb)
        lines.append(f"largest batch within {budget_gb:g} GiB: {fit.images} images per call "
                     f"({'estimated: ' if fit.estimated else ''}{fit.reason})")
    return best.images, lines


def recommend(env: RecipeEnv | None = None, priority: str = "balance",
              memory_budget: float | None = None, model: str | None = None,
              measured: "Comparison | None" = None, throughput: "ThroughputResult | None" = None,
              max_rel_error: float = MAX_REL_ERROR) -> Recommendation:
    """Walk seed 002's decision tree for this hardware and priority; returns a recipe and the reasoning.

    Args:
        priority: ``quality``, ``balance``, ``speed`` or ``throughput`` (images per second: batching).
        memory_budget: GiB the pipeline may use (default: the GPU's memory, or unbounded on CPU).
        model: fit the recipe to this model (a transformer drops UNet-only parts, each with the reason).
        measured: on CPU, a comparison run here (``lab.compare``): the fastest recipe within the quality bound
            replaces the fixed rule (``measured_pick``).
        throughput: a batch sweep (``lab.batch_sweep``): with ``priority="throughput"`` its fastest batch in
            images per second within ``memory_budget`` is the recommended batch.
        max_rel_error: the first-step relative error a measured pick may have against the comparison's baseline.
    """
    choose("priority", priority, PRIORITIES)
    if memory_budget is not None and not memory_budget > 0:
        raise LabError(f"memory_budget must be a positive number of GiB, got {memory_budget!r}")
    env = env or RecipeEnv.detect()
    if priority == "throughput":  # the recipe of a balanced priority, then the batch that maximises images/s
        rec = recommend(env, "balance", memory_budget, model, measured=measured, max_rel_error=max_rel_error)
        if throughput is None:
            rec.reasons.append("throughput: batching pays where one call leaves the hardware idle (a GPU); its gain "
                               "is hardware-specific, so measure it: lab.batch_sweep(...) and pass throughput=")
            return rec
        rec.batch, lines = _throughput_pick(throughput, memory_budget)
        if throughput.recipe and throughput.recipe != rec.recipe:
            lines.append(f"the sweep measured {throughput.recipe!r}; the batch is read from it")
        rec.reasons += lines
        return rec
    precision, why = _precision(env)
    parts, reasons = [precision], [why]
    budget = memory_budget if memory_budget is not None else env.cuda_memory_gb
    if env.cuda:
        consumer = (budget or 0) < 16
        reasons.append(f"{'consumer' if consumer else 'data-centre'} GPU branch: {budget or 0:.0f} GiB "
                       f"{'<' if consumer else '>='} 16 GiB")
        parts.append("sdpa")
        if consumer:  # quantization and memory first
            parts += {"quality": ["quanto-denoiser-int8w"], "balance": ["quanto-denoiser-int8w", "dpmpp-2m-karras",
                                                                    "steps-20"],
                      "speed": ["quanto-denoiser-int4w", "dpmpp-2m-karras", "steps-12"]}[priority]
            parts.append("model-cpu-offload")
            reasons.append("weights quantized and components offloaded so the model fits; SDPA is already "
                           "memory-efficient, so no attention slicing")
        else:  # compute and compilation first
            parts += ["channels-last", "compile-denoiser-reduce-overhead"]
            if priority == "speed":
                parts += ["dpmpp-2m-karras", "steps-20"]
            reasons.append("enough memory: spend it on speed. An eager denoiser is launch-bound on a fast GPU (H100: "
                           "41 ms per sd15 step, host CPU at 100 %), so CUDA graphs (compile-denoiser-reduce-overhead) "
                           "on channels-last: 9.2 ms per step, 4.8x over fp32. Cost: a first call of 70-120 s; "
                           "max-autotune is opt-in (not finished after 4 min there)")
    elif measured is not None and (pick := measured_pick(measured, max_rel_error))[0] is not None:
        parts = pick[0].split("+")
        reasons = [f"CPU-only branch, measured ({measured.model}, {measured.out}): the fastest recipe within the "
                   f"quality bound, not a fixed rule", *pick[1]]
    else:
        if measured is not None:
            reasons += ["CPU-only branch: the measured comparison gives no pick", *measured_pick(measured, max_rel_error)[1]]
        reasons.append("CPU-only branch, unmeasured: the seed's GGUF is outside diffusers; its ONNX Runtime (and "
                       "OpenVINO) are recipes here (onnxruntime-denoiser, openvino-denoiser) whose gain depends on "
                       "the CPU, so this fixed rule uses precision, layout, compile and fewer steps; measure them "
                       "side by side (benchmarks/cpu_runtimes.py) and pass measured= to follow the measurement")
        parts += ["sdpa", "channels-last"]
        if priority in ("balance", "speed"):
            parts.append("compile-denoiser")
            reasons.append("torch.compile (inductor, C++ backend) fuses the denoiser's element-wise work")
        if priority == "speed":
            parts += ["dpmpp-2m-karras", "steps-12"]
            reasons.append("DPM-Solver++ (Karras) keeps quality at a third of the steps")
        if memory_budget is not None and memory_budget < 4:
            parts.append("quanto-denoiser-int8w")
            reasons.append(f"a {memory_budget:g} GiB budget: int8 denoiser weights are 3.9x smaller")
    if model is not None:
        parts, notes = fit_to_model(parts, model_kind(model))
        reasons += notes
        cache, why = cache_advice(priority, model_kind(model), parts)
        parts += [cache] if cache else []
        reasons.append(why)
    text = "+".join(parts)
    plan = parse(text)
    return Recommendation(recipe=text, reasons=reasons, not_applicable=plan.check(env))


# The cache taken where speed comes first, on a denoiser that is a diffusers CacheMixin; CACHE_EVIDENCE carries the
# figures it was chosen by (docs/benchmarks.md "Caches", alternated calls), once, for every reason that cites them.
CACHE_PICK = {"cache_mixin": "mag-cache-0.3"}
CACHE_EVIDENCE = ("on tiny-flux (CPU, 28 steps) mag-cache-0.3 skipped 57 % of the block evaluations: 2.4x the uncached "
                  "pipeline, final latent 3.9 % off its trajectory, held-out adherence 0.874 against 0.876 "
                  "(docs/benchmarks.md, Caches)")
MIN_CACHE_STEPS = 16  # below this a cache has few steps to reuse, and each reused step is a larger share of them


def cache_advice(priority: str, kind, parts: list[str]) -> tuple[str | None, str]:
    """Whether a cache is worth its quality cost for ``priority`` on a model of ``kind``: the cache and why."""
    if kind is None:
        return None, "no cache: which one fits is known once the model is (a hub id is read when it loads)"
    if priority != "speed":
        return None, (f"no cache: a cache changes the image by reusing earlier steps' work (trajectory drift), which "
                      f"priority '{priority}' does not trade; priority 'speed' takes one where it pays "
                      f"({CACHE_EVIDENCE})")
    steps = next((int(p.split("-")[1]) for p in parts if p.startswith("steps-")), None)
    if steps is not None and steps < MIN_CACHE_STEPS:
        return None, (f"no cache: with {steps} steps a cache has little to reuse (it pays from about "
                      f"{MIN_CACHE_STEPS} steps); fewer steps already took that saving")
    if not kind.cache:
        return None, (f"no cache: {kind.denoiser_class} is not a diffusers CacheMixin; pab-<N> and deepcache-<N> "
                      "apply to a UNet, but what they cost in adherence on one is not measured here yet: compare "
                      "them with lab.compare and lab.evaluate before taking one")
    return CACHE_PICK["cache_mixin"], f"{CACHE_PICK['cache_mixin']}: {CACHE_EVIDENCE}"
