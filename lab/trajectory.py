"""Whole-trajectory fidelity: every step's latents of a recipe against the baseline's, from identical seeded latents.

The first-step fidelity (``lab.fidelity``) cannot see a cache: a cache computes the first step in full and skips
later ones. Here the whole denoising loop runs from the same initial latents, prompt and scheduler as the
baseline's, and the latents after every step are kept; the relative L2 error of each step's latents against the
baseline's is the per-step drift, and the last one (the final latent the VAE decodes) is the number per recipe.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .cases import Case
from .results import Record, load_tensor, save_tensor


def trajectory_latents(pipe, case: Case):
    """The latents after every denoising step of ``case`` (fp32, on CPU), stacked: ``[steps, *latent shape]``."""
    import torch

    from .denoiser import denoiser, initial_latents
    from .models import default_size

    generator = torch.Generator("cpu").manual_seed(case.seed)
    size = case.height or default_size(pipe)
    initial = initial_latents(pipe, size, case.width or size, generator)
    steps: list = []

    def keep(pipe_, step, timestep, callback_kwargs):
        steps.append(callback_kwargs["latents"].detach().float().cpu().clone())
        return callback_kwargs

    dtype = next(denoiser(pipe).parameters()).dtype
    with torch.no_grad():
        pipe(latents=initial.to(pipe.device, dtype), generator=generator, output_type="latent",
             callback_on_step_end=keep, **case.pipeline_kwargs())
    return torch.stack(steps)


@dataclass
class Trajectory(Record):
    """A recipe's trajectory against the baseline's: the final latent's relative error and each step's drift."""

    final_rel_error: float
    drift: list[float] = field(default_factory=list)  # relative L2 error of the latents after step i

    @property
    def steps(self) -> int:
        return len(self.drift)

    @property
    def max_drift(self) -> float:
        return max(self.drift, default=math.nan)

    @classmethod
    def between(cls, latents, reference) -> "Trajectory":
        """From two ``trajectory_latents`` stacks of one case (same steps, same shape)."""
        if tuple(latents.shape) != tuple(reference.shape):
            raise ValueError(f"trajectories differ in shape: {tuple(latents.shape)} vs {tuple(reference.shape)} "
                             "(other steps, model or image size)")
        a, b = latents.flatten(1).double(), reference.flatten(1).double()
        norms = b.norm(dim=1)
        drift = [float(e / n) if float(n) else math.nan for e, n in zip((a - b).norm(dim=1), norms)]
        return cls(final_rel_error=drift[-1] if drift else math.nan, drift=drift)


def save_latents(latents, path: str | os.PathLike) -> Path:
    """Write a trajectory's latents as safetensors (no pickle), atomically."""
    return save_tensor(latents, path, "latents")


def load_latents(path: str | os.PathLike):
    return load_tensor(path, "latents")


def drift_frame(comparison):
    """Per recipe and step: the worst drift over its runs (rows: steps, columns: recipes), for plotting."""
    import pandas as pd

    columns: dict[str, dict[int, float]] = {}
    for r in comparison.records:
        if r.status == "ok" and r.trajectory is not None:
            col = columns.setdefault(r.recipe, {})
            for i, d in enumerate(r.trajectory.drift):
                col[i + 1] = max(col.get(i + 1, 0.0), d)
    frame = pd.DataFrame(columns)
    frame.index.name = "step"
    return frame
