"""Named noise schedulers, swapped in from the pipeline's own scheduler config."""

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
}


def scheduler_names() -> list[str]:
    return list(SCHEDULERS)


def make_scheduler(name: str, base_config: dict[str, Any]):
    """Build scheduler ``name`` from another scheduler's config (betas, prediction type...)."""
    import diffusers

    cls_name, extra = SCHEDULERS[choose("scheduler", name, SCHEDULERS)]
    return getattr(diffusers, cls_name).from_config(base_config, **extra)


def set_scheduler(pipe, name: str):
    """Replace ``pipe.scheduler`` by the named scheduler; returns the pipeline."""
    pipe.scheduler = make_scheduler(name, pipe.scheduler.config)
    return pipe
