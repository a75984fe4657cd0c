"""Mixed precision per component (seed 002 §5.1) and a small search over such plans.

The seed quantizes the VAE with int8 *activations* and casts the text encoder to fp16 "because it is
sensitive"; whether either helps depends on the hardware, so here each component's options are
combined into plans, measured, and the Pareto set of (latency, peak memory, SSIM) is returned.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from .cases import Case
from .recipes import parse

DEFAULT_OPTIONS: dict[str, tuple[str, ...]] = {
    "text": ("fp32-text", "bf16-text"),
    "denoiser": ("fp32-denoiser", "bf16-denoiser", "quanto-denoiser-int8w", "bf16-denoiser+quanto-denoiser-int8w"),
    "vae": ("fp32-vae", "bf16-vae"),
}


def mixed_plans(options: dict[str, Sequence[str]] | None = None) -> list[str]:
    """Every combination of one option per component, as recipe strings (each checked by ``parse``)."""
    options = options or DEFAULT_OPTIONS
    plans = []
    for combo in itertools.product(*options.values()):
        text = "+".join(part for option in combo for part in option.split("+"))
        parse(text)
        plans.append(text)
    return plans


def search_mixed_precision(model: str, cases: Sequence[Case] | Case, *, plans: Sequence[str] | None = None,
                           out: str = "runs/mixed", repeats: int = 2, device: str = "auto", progress: bool = True):
    """Measure the plans against fp32; returns (Comparison, its Pareto set as a DataFrame)."""
    from .experiments import compare

    plans = list(plans) if plans is not None else mixed_plans()
    baseline = "fp32"
    candidates = [baseline] + [p for p in plans if p != baseline]
    cmp = compare(model, candidates, cases, repeats=repeats, out=out, device=device, progress=progress)
    return cmp, cmp.pareto()
