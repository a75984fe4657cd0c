"""Named noise schedulers, swapped in from the pipeline's own scheduler config.

Two families do not mix: DDPM-style schedulers (noise or v prediction, the SD 1.5/2.1/XL UNets) and
flow-matching ones (velocity prediction, FLUX.1 and SD3.5). ``fits()`` says why a scheduler cannot drive a model.
"""

from __future__ import annotations

from typing import Any

from ._checks import choose

# name -> (diffusers class, extra config); one table so recipes, CLI and loader agree.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpmpp-2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp-2m-karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "flow-euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "flow-heun": ("FlowMatchHeunDiscreteScheduler", {}),
}
FLOW = ("flow-euler", "flow-heun")


def scheduler_names() -> list[str]:
    return list(SCHEDULERS)


def fits(name: str, kind) -> str | None:
    """Why scheduler ``name`` cannot drive a model of ``kind`` (a ``lab.denoiser.ModelKind``); None if it can."""
    flow = name in FLOW
    if flow and not kind.flow_matching:
        return (f"{name} is a flow-matching scheduler and {kind.pipeline} is a DDPM-style model "
                f"({kind.scheduler}); use one of {', '.join(n for n in SCHEDULERS if n not in FLOW)}")
    if not flow and kind.flow_matching:
        return (f"{name} is a DDPM-style (noise-prediction) scheduler and {kind.pipeline} is a flow-matching "
                f"model ({kind.scheduler}); use one of {', '.join(FLOW)}")
    if name == "flow-heun" and kind.pipeline.startswith("Flux"):
        return "FluxPipeline passes its own sigmas to the scheduler, which FlowMatchHeunDiscreteScheduler does not take"
    return None


def make_scheduler(name: str, base_config: dict[str, Any]):
    """Build scheduler ``name`` from another scheduler's config (betas, prediction type, shift...)."""
    import diffusers

    cls_name, extra = SCHEDULERS[choose("scheduler", name, SCHEDULERS)]
    return getattr(diffusers, cls_name).from_config(base_config, **extra)


def set_scheduler(pipe, name: str):
    """Replace ``pipe.scheduler`` by the named scheduler (refused if it does not fit the model); returns the pipeline."""
    from ._checks import LabError
    from .denoiser import kind_of

    if why := fits(choose("scheduler", name, SCHEDULERS), kind_of(pipe)):
        raise LabError(f"scheduler {name!r} cannot drive this model: {why}")
    pipe.scheduler = make_scheduler(name, pipe.scheduler.config)
    return pipe
