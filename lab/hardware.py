"""Hardware-aware compilation and placement (seed 002 §5.2, seed 000 §4.1): a decision with reasons.

The seed's version keys on the device *name* and passes options that do not exist for the chosen
backend (``mkldnn`` for inductor on CPU, cudagraphs with ``reduce-overhead`` twice). Here the decision
keys on what the hardware can do: CUDA compute capability (bf16 and TF32 from sm80; FP8 from sm89),
GPU memory, and on CPU the AMX / AVX-512 BF16 flags and the core count. On CUDA it follows what was
measured on an H100 (docs/benchmarks.md, "GPU evidence"): the eager UNet is launch-bound, CUDA graphs
(``reduce-overhead``) are the compile mode that pays, and max-autotune is opt-in because its tuning
had not finished after 4 minutes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .env import RecipeEnv
from .results import Record

log = logging.getLogger("lab.hardware")


@dataclass
class HardwarePlan(Record):
    """What to compile and how, where each component runs, and why."""

    device: str
    precision: str
    compile_mode: str | None
    compile_backend: str | None
    placement: dict[str, str]
    recipe: str
    threads: int | None = None
    reasons: list[str] = field(default_factory=list)
    costs: list[str] = field(default_factory=list)  # what the plan costs before it pays (compile time ...)

    def _repr_markdown_(self) -> str:
        costs = "".join(f"\n- cost: {c}" for c in self.costs)
        return f"**`{self.recipe}`**\n\n" + "\n".join(f"- {r}" for r in self.reasons) + costs


def hardware_plan(env: RecipeEnv | None = None, *, model_gb: float | None = None,
                  max_autotune: bool = False, model: str | None = None, thread_scaling=None) -> HardwarePlan:
    """Choose precision, compile mode/backend and component placement for this hardware.

    Args:
        model_gb: the pipeline's weight size, to decide whether everything fits on the GPU.
        max_autotune: on CUDA, compile with max-autotune instead of reduce-overhead (opt-in: minutes of tuning).
        model: fit the recipe to this model (``lab.recipes.fit_to_model``: bf16 for a transformer, ...).
        thread_scaling: a measured ``lab.threads.ThreadScaling``: on a CPU the plan takes its best thread
            count (``ThreadScaling.best``: the fastest that is distinguishably faster than one thread) instead of one
            thread per core.
    """
    from .denoiser import model_kind
    from .recipes import fit_to_model
    from .recipes.compile import COMPILE_COST

    import os

    env = env or RecipeEnv.detect()
    reasons: list[str] = []
    placement = {"text_encoder": env.device, "denoiser": env.device, "vae": env.device}
    threads = None
    costs: list[str] = []
    if env.cuda:
        major, minor = env.cuda_capability or (0, 0)
        precision = "bf16" if (major, minor) >= (8, 0) else "fp16"
        reasons.append(f"compute capability {major}.{minor}: "
                       + ("bf16 has fp32's range at fp16's speed (sm80+)" if precision == "bf16"
                          else "no fast bf16 before sm80, so fp16"))
        compile_mode, backend = ("max-autotune" if max_autotune else "reduce-overhead"), "inductor"
        compile_recipe = f"compile-denoiser-{compile_mode}"
        reasons.append("CUDA graphs (inductor, mode reduce-overhead): an eager UNet step is launch-bound on a fast "
                       "GPU (H100, sd15 fp16 at 512²: 41 ms per step with the host CPU at 100 %, no faster than "
                       "fp32); graphs replay the step in one launch (9.2 ms, 4.8x over fp32)")
        if max_autotune:
            reasons.append("max-autotune asked for: Triton GEMM/conv autotuning on top of CUDA graphs")
        reasons.append("channels-last (measured with it); no fused QKV (no gain on the H100: 0.357 vs 0.354 s)")
        costs.append(f"{compile_recipe}: {COMPILE_COST[compile_recipe]}; warm up once before serving")
        parts = [precision, "sdpa", "channels-last", compile_recipe]
        if (major, minor) >= (8, 0):
            parts.insert(1, "tf32")
            reasons.append("TF32 for any remaining fp32 matmuls (sm80+)")
        if model_gb is not None and env.cuda_memory_gb is not None and model_gb > 0.8 * env.cuda_memory_gb:
            placement["text_encoder"] = "cpu"
            parts = [p for p in parts if not p.startswith("compile")] + ["model-cpu-offload"]
            compile_mode = backend = None
            costs.clear()
            reasons.append(f"{model_gb:.1f} GB of weights on a {env.cuda_memory_gb:.0f} GB GPU: components are "
                           "offloaded to the CPU between uses, and offload hooks rule out compile")
    else:
        cores = os.cpu_count() or 1
        threads = cores
        reasons.append(f"{cores} CPU cores: one intra-op thread per core (no hyper-thread oversubscription)")
        if env.cpu_bf16:
            precision = "bf16"
            reasons.append("AMX / AVX-512 BF16 present: bf16 matmuls run natively; how much faster than fp32 on this "
                           "machine is a measurement (compare fp32,bf16), not a given")
        else:
            precision = "fp32"
            reasons.append("no native bf16 on this CPU: bf16 would be emulated, so fp32")
        compile_mode, backend = "default", "inductor"
        reasons.append("inductor's C++/OpenMP backend fuses the element-wise work between convolutions; "
                       "reduce-overhead (CUDA graphs) and max-autotune (Triton) do nothing on a CPU")
        parts = [precision, "sdpa", "channels-last", "compile-denoiser"]
        costs.append("compile-denoiser: a cold compile of sd15's UNet takes about 90 s on 2 CPU cores")
        if thread_scaling is not None and thread_scaling.best is not None:
            threads = thread_scaling.best
            point = thread_scaling.point(threads)
            fewest = thread_scaling.measured[0].threads
            reasons[0] = (f"{thread_scaling.why_best()}; measured {point.latency_s:.3f} s on "
                          f"{thread_scaling.model} {thread_scaling.label}, {point.speedup:.2f}x over "
                          f"{fewest}; {cores} cores here")
            parts.insert(0, f"threads-{threads}")
    if model is not None:
        parts, notes = fit_to_model(parts, model_kind(model))
        reasons += notes
        precision = next((p for p in parts if p in ("fp32", "fp16", "bf16")), precision)
    plan = HardwarePlan(device=env.device, precision=precision, compile_mode=compile_mode,
                        compile_backend=backend, placement=placement, recipe="+".join(parts), threads=threads,
                        reasons=reasons, costs=costs)
    for reason in reasons:
        log.info("hardware plan: %s", reason)
    log.info("hardware plan: recipe %s, placement %s", plan.recipe, placement)
    return plan
