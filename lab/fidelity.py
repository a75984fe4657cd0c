"""Numerical fidelity of a recipe: one denoising step's update against the baseline's, on identical inputs.

Image SSIM against the fp32 image says nothing about a recipe on a random-weight model (``*-arch``,
``tiny-random``): their trajectories are chaotic, so fp16 and fp32 images of sd15-arch scored SSIM 0.035
on an H100 whatever the recipe. One step is not chaotic: with the same initial latents, prompt and
scheduler, the first step's update (latents after step 0 minus the scaled initial latents, which is the
scheduler's linear map of the denoiser's guided prediction) compares a recipe's arithmetic with the
baseline's. Cosine similarity near 1 and a small relative error mean the recipe computes the same thing.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from .cases import Case
from .results import Record, load_tensor, save_tensor


def first_step_update(pipe, case: Case):
    """The first denoising step's update of ``case`` (fp32, on CPU) from seeded initial latents."""
    import torch

    from .denoiser import denoiser, initial_latents
    from .models import default_size

    generator = torch.Generator("cpu").manual_seed(case.seed)
    size = case.height or default_size(pipe)
    initial = initial_latents(pipe, size, case.width or size, generator)
    captured = {}

    def after_first_step(pipe_, step, timestep, callback_kwargs):
        captured["latents"] = callback_kwargs["latents"].detach().float().cpu().clone()
        pipe_._interrupt = True  # diffusers skips the remaining steps; the call returns the latents
        return callback_kwargs

    # the dtype the denoiser computes in: float8-stored (layerwise casting) and GGUF-packed (uint8) weights are not
    # it, and a runtime-run denoiser (lab.runtimes) has no torch parameters to ask
    computing = (torch.float32, torch.float16, torch.bfloat16)
    dtype = next((p.dtype for p in denoiser(pipe).parameters() if p.dtype in computing), None) or denoiser(pipe).dtype
    with torch.no_grad():
        pipe(latents=initial.to(pipe.device, dtype), generator=generator, output_type="latent",
             callback_on_step_end=after_first_step, **case.pipeline_kwargs())
    # flow-matching schedulers start from the noise itself (sigma 1): they have no init_noise_sigma
    return captured["latents"] - initial * float(getattr(pipe.scheduler, "init_noise_sigma", 1.0))


@dataclass
class Fidelity(Record):
    """How closely an update matches the reference's: cosine similarity and relative L2 error."""

    cosine: float
    rel_error: float

    @classmethod
    def between(cls, update, reference) -> "Fidelity":
        if tuple(update.shape) != tuple(reference.shape):
            raise ValueError(f"updates differ in shape: {tuple(update.shape)} vs {tuple(reference.shape)} "
                             "(another model or image size)")
        a, b = update.flatten().double(), reference.flatten().double()
        norm = float(b.norm())
        cos = float(a.dot(b) / (a.norm() * b.norm())) if norm and float(a.norm()) else math.nan
        return cls(cosine=cos, rel_error=float((a - b).norm()) / norm if norm else math.nan)


def save_update(update, path: str | os.PathLike) -> Path:
    """Write an update as safetensors (no pickle), atomically."""
    return save_tensor(update, path, "update")


def load_update(path: str | os.PathLike):
    return load_tensor(path, "update")


def comparable(plan, baseline_plan) -> str | None:
    """Why a first-step comparison with the baseline would not mean anything (None: it does)."""
    def generation(p) -> set[str]:
        return {r.name for r in p.recipes if r.family in ("scheduler", "steps")}

    if generation(plan) != generation(baseline_plan):
        return "the recipe changes the scheduler, steps or guidance, so its first step is a different computation"
    return None
