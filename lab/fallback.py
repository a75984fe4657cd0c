"""Out-of-memory fallback (seed 000's "auto degradation"): degrade step by step instead of failing.

On an out-of-memory error the call is retried with VAE tiling, then attention slicing, then at a
lower resolution (three quarters each time, down to ``min_size``); every action is recorded.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

from .cases import Case
from .results import Record


def is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


@dataclass
class FallbackResult(Record):
    case: Case  # what finally ran
    actions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def generate_with_fallback(pipe, case: Case, *, min_size: int = 256):
    """Generate ``case``; on OOM degrade and retry. Returns (image, FallbackResult); re-raises at the end."""
    import torch

    from .models import default_size

    steps = [("vae-tiling", lambda: pipe.vae.enable_tiling()),
             ("attention-slicing", lambda: pipe.enable_attention_slicing("auto"))]
    result = FallbackResult(case=case)
    current = case
    while True:
        try:
            out = pipe(generator=torch.Generator("cpu").manual_seed(current.seed), **current.pipeline_kwargs())
            result.case = current
            return out.images[0], result
        except Exception as err:
            if not is_oom(err):
                raise
            result.errors.append(f"{type(err).__name__}: {str(err)[:200]}")
            gc.collect()
            if str(pipe.device).startswith("cuda"):
                torch.cuda.empty_cache()
            if steps:
                name, action = steps.pop(0)
                action()
                result.actions.append(name)
                continue
            size = current.height or default_size(pipe)
            smaller = max(min_size, int(size * 0.75) // 8 * 8)
            if smaller >= size:
                raise
            current = current.with_overrides(height=smaller, width=smaller)
            result.actions.append(f"resolution {size} -> {smaller}")
