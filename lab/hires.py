"""Hires fix (seed 000 §5.2): txt2img at a base size, upscale, then img2img at the larger size."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ._checks import LabError
from .cases import Case
from .env import synchronize
from .results import Record


@dataclass
class HiresTimes(Record):
    base_s: float
    upscale_s: float
    refine_s: float
    base_size: int
    final_size: int

    @property
    def total_s(self) -> float:
        return self.base_s + self.upscale_s + self.refine_s

    def to_markdown(self) -> str:
        """The three stages as a table, with their sizes and the total."""
        return ("| stage | size | seconds |\n|---|---|---|\n"
                f"| base generation | {self.base_size}² | {self.base_s:.2f} |\n"
                f"| Lanczos upscale | {self.base_size}² → {self.final_size}² | {self.upscale_s:.3f} |\n"
                f"| img2img refine | {self.final_size}² | {self.refine_s:.2f} |\n"
                f"| **total** | | **{self.total_s:.2f}** |")

    def _repr_markdown_(self) -> str:
        return self.to_markdown()


def hires_fix(pipe, case: Case, *, scale: float = 2.0, strength: float = 0.5, refine_steps: int | None = None):
    """Generate ``case`` at its size, upscale by ``scale`` (Lanczos) and refine with img2img.

    The img2img pipeline shares every module with ``pipe`` (``from_pipe``: no second copy of the
    weights). Returns (base image, final image, HiresTimes).
    """
    import torch
    from PIL import Image

    from ._quiet import quiet_transformers

    with quiet_transformers():  # importing the auto pipelines imports every image processor, each with a notice
        from diffusers import AutoPipelineForImage2Image

    from .models import default_size

    if not scale > 1:
        raise LabError(f"scale must be > 1, got {scale!r}")
    if not 0 < strength <= 1:
        raise LabError(f"strength must be in (0, 1], got {strength!r}")
    device = str(pipe.device)
    base_size = case.height or default_size(pipe)
    final = int(base_size * scale) // 8 * 8
    kwargs = case.pipeline_kwargs()

    synchronize(device)
    t0 = time.perf_counter()
    base = pipe(generator=torch.Generator("cpu").manual_seed(case.seed), **kwargs).images[0]
    synchronize(device)
    t1 = time.perf_counter()
    upscaled = base.resize((final, final), Image.LANCZOS)
    t2 = time.perf_counter()
    img2img = AutoPipelineForImage2Image.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    refine = {k: v for k, v in kwargs.items() if k not in ("height", "width")}
    if refine_steps is not None:
        refine["num_inference_steps"] = refine_steps
    result = img2img(image=upscaled, strength=strength, generator=torch.Generator("cpu").manual_seed(case.seed),
                     **refine).images[0]
    synchronize(device)
    t3 = time.perf_counter()
    return base, result, HiresTimes(t1 - t0, t2 - t1, t3 - t2, base_size, final)
