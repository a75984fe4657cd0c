"""Adaptive inference (seed 002 §5.3): steps, guidance and resolution from the prompt and the memory.

The seed's complexity score counts capitalised words and words ending in -ing/-ed. Here it counts
what makes a scene hard to render: how many words, how many separate things are asked for (clauses
joined by commas, "and", "with"), and how many spatial relations tie them together. Simple prompts
converge in fewer steps and need less guidance; when memory is short the resolution drops instead of
the call failing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._checks import LabError
from .cases import Case
from .results import Record

_CLAUSES = re.compile(r",|;|\band\b|\bwith\b|\bwhile\b")
_RELATIONS = re.compile(r"\b(on|in|under|over|above|below|behind|beside|next to|left|right|between|near)\b")


def prompt_complexity(prompt: str) -> float:
    """A score in [0, 1]: 0 for a one-word prompt, 1 for a long multi-object scene."""
    words = len(prompt.split())
    clauses = len(_CLAUSES.findall(prompt.lower()))
    relations = len(_RELATIONS.findall(prompt.lower()))
    return min(1.0, 0.5 * min(words / 30, 1.0) + 0.3 * min(clauses / 4, 1.0) + 0.2 * min(relations / 3, 1.0))


@dataclass
class AdaptivePolicy(Record):
    """Maps complexity to steps and guidance linearly; resolution follows the memory available."""

    min_steps: int = 10
    max_steps: int = 30
    min_guidance: float = 5.0
    max_guidance: float = 7.5
    bytes_per_pixel: float = 24_000.0  # activation memory per output pixel (SD 1.5-like, fp32); calibrate
    min_size: int = 256

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise LabError(f"need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")

    def decide(self, case: Case, *, native_size: int, weight_bytes: int, available_bytes: int) -> Case:
        """The case with adapted steps, guidance and size; raises when even the weights do not fit."""
        if weight_bytes >= available_bytes:
            raise LabError(f"impossible memory budget: the weights alone need {weight_bytes / 2**30:.2f} GiB and "
                           f"only {available_bytes / 2**30:.2f} GiB is available; quantize the weights "
                           "(quanto-denoiser-int8w) or offload them (model-cpu-offload)")
        c = prompt_complexity(case.prompt)
        steps = round(self.min_steps + c * (self.max_steps - self.min_steps))
        guidance = round(self.min_guidance + c * (self.max_guidance - self.min_guidance), 2)
        size = native_size
        while size > self.min_size and weight_bytes + self.bytes_per_pixel * size * size > available_bytes:
            size -= 64
        if weight_bytes + self.bytes_per_pixel * size * size > available_bytes:
            raise LabError(f"impossible memory budget: even {size}x{size} needs "
                           f"{(weight_bytes + self.bytes_per_pixel * size * size) / 2**30:.2f} GiB of "
                           f"{available_bytes / 2**30:.2f} GiB available")
        return case.with_overrides(steps=steps, guidance=guidance, height=size, width=size)


def available_memory(device: str) -> int:
    """Bytes free for the next call: CUDA free memory, or the system's available RAM."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def adapt(pipe, case: Case, policy: AdaptivePolicy | None = None, *, available_bytes: int | None = None) -> Case:
    """Apply ``policy`` for ``pipe`` (its native size and weight bytes) and the memory free now."""
    from .models import default_size, weight_bytes

    policy = policy or AdaptivePolicy()
    available = available_bytes if available_bytes is not None else available_memory(str(pipe.device))
    return policy.decide(case, native_size=default_size(pipe), weight_bytes=sum(weight_bytes(pipe).values()),
                         available_bytes=available)


def evaluate_policy(pipe, cases, policy: AdaptivePolicy | None = None, *, available_bytes: int | None = None):
    """Per prompt: the policy's steps against a fixed ``max_steps`` run — time saved and SSIM/PSNR lost."""
    import time

    import pandas as pd
    import torch

    from .env import synchronize
    from .quality import psnr, ssim

    policy = policy or AdaptivePolicy()
    device = str(pipe.device)

    def run(case: Case):
        pipe(generator=torch.Generator("cpu").manual_seed(case.seed), **case.with_overrides(steps=1).pipeline_kwargs())
        synchronize(device)
        start = time.perf_counter()
        image = pipe(generator=torch.Generator("cpu").manual_seed(case.seed), **case.pipeline_kwargs()).images[0]
        synchronize(device)
        return image, time.perf_counter() - start

    rows = []
    for case in cases:
        adapted = adapt(pipe, case, policy, available_bytes=available_bytes)
        fixed = adapted.with_overrides(steps=policy.max_steps, guidance=policy.max_guidance)
        fixed_image, fixed_s = run(fixed)
        adaptive_image, adaptive_s = run(adapted)
        rows.append({"prompt": case.prompt, "complexity": prompt_complexity(case.prompt),
                     "fixed_steps": fixed.steps, "adaptive_steps": adapted.steps, "guidance": adapted.guidance,
                     "fixed_s": fixed_s, "adaptive_s": adaptive_s,
                     "time_saved_pct": 100 * (1 - adaptive_s / fixed_s),
                     "ssim": ssim(adaptive_image, fixed_image), "psnr": psnr(adaptive_image, fixed_image)})
    return pd.DataFrame(rows)
