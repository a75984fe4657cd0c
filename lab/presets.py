"""Optimisation tiers (seed 002 §3) and the hardware decision tree (seed 002 §2), corrected.

Corrections to the seed: attention slicing is not combined with SDPA (it slows SDPA down); sequential
offload is never combined with ``torch.compile`` (it cannot be traced); bitsandbytes 4-bit and LCM-LoRA
need CUDA and downloaded weights respectively, so the CPU branches use what runs here (bf16 with AMX
or AVX-512 BF16, channels-last, compile, quanto); GGUF and ONNX Runtime (the seed's CPU branch) are
outside diffusers and this workbench, so the CPU branch names the nearest equivalents.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._checks import LabError, choose
from .env import RecipeEnv
from .denoiser import model_kind
from .recipes import fit_to_model, parse
from .results import Record

PRIORITIES = ("quality", "balance", "speed")
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

    def __str__(self) -> str:
        lines = [f"recommended: {self.recipe}"] + [f"  - {r}" for r in self.reasons]
        lines += [f"  ! {k} cannot apply here: {v}" for k, v in self.not_applicable.items()]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return f"**`{self.recipe}`**\n\n" + "\n".join(f"- {r}" for r in self.reasons)


def recommend(env: RecipeEnv | None = None, priority: str = "balance",
              memory_budget: float | None = None, model: str | None = None) -> Recommendation:
    """Walk seed 002's decision tree for this hardware and priority; returns a recipe and the reasoning.

    Args:
        priority: ``quality``, ``balance`` or ``speed``.
        memory_budget: GiB the pipeline may use (default: the GPU's memory, or unbounded on CPU).
        model: fit the recipe to this model (a transformer drops UNet-only parts, each with the reason).
    """
    choose("priority", priority, PRIORITIES)
    if memory_budget is not None and not memory_budget > 0:
        raise LabError(f"memory_budget must be a positive number of GiB, got {memory_budget!r}")
    env = env or RecipeEnv.detect()
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
    else:
        reasons.append("CPU-only branch: the seed's GGUF + ONNX Runtime are outside diffusers; the nearest "
                       "in-framework levers are precision, layout, compile and fewer steps")
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


# The cache taken where speed comes first, on a denoiser that is a diffusers CacheMixin. Measured on tiny-flux
# (CPU, 28 steps, docs/benchmarks.md "Caches"): mag-cache-0.3 ran 2.3x the uncached pipeline (calls alternated),
# its final latent 5.0 % off the uncached one's, held-out adherence 0.844 against 0.840 (50 prompts).
CACHE_PICK = {"cache_mixin": "mag-cache-0.3"}
CACHE_EVIDENCE = ("on tiny-flux (CPU, 28 steps) mag-cache-0.3 skipped 57 % of the block evaluations: 2.3x the uncached "
                  "pipeline, final latent 5.0 % off its trajectory, held-out adherence 0.844 against 0.840 "
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
