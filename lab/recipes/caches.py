"""Cache recipes: diffusers' step caches (``enable_cache`` and the hooks in ``diffusers.hooks``), each with its
setting in the name (``first-block-cache-0.08``, ``taylorseer-4``, ``mag-cache-0.06``, ``faster-cache-2``,
``pab-2``).

A cache reuses what an earlier denoising step computed (a whole pass past the first block, a block's residual,
an attention output) instead of computing it again; it trades the final image for speed, so its quality is read
over the whole trajectory (``lab.trajectory``), not from the first step. First-block cache, TaylorSeer, MagCache
and FasterCache need a denoiser that is a diffusers ``CacheMixin`` (``ModelKind.cache``); Pyramid Attention
Broadcast also runs on a UNet through its hook. ``count_evaluations`` counts what a cache computed and skipped.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .._checks import LabError
from .base import Check, Fit, Recipe, all_fits, needs_denoiser, needs_package


@dataclass(frozen=True)
class CacheSpec:
    """One cache technique: its name prefix, its setting's meaning and allowed range, and how to apply it."""

    prefix: str
    setting: str  # what the number in the name is
    integer: bool
    low: float  # allowed: low < value <= high (integers: low <= value <= high)
    high: float
    default: float
    mixin: bool  # needs a CacheMixin denoiser (enable_cache)
    about: str
    apply: Callable[..., None]
    fit: Fit | None = None  # besides the CacheMixin need
    check: Check | None = None
    needs: str = ""

    def allowed(self) -> str:
        return (f"an integer from {self.low:g} to {self.high:g}" if self.integer
                else f"a number in ({self.low:g}, {self.high:g}]")

    def value(self, text: str) -> float:
        """The setting written in a recipe name, checked (bad values name what is allowed)."""
        try:
            value = int(text) if self.integer else float(text)
        except ValueError:
            value = None
        inside = value is not None and (self.low <= value <= self.high if self.integer else self.low < value <= self.high)
        if not inside:
            raise LabError(f"recipe {self.prefix}-{text!r}: the {self.setting} must be {self.allowed()}, "
                           f"e.g. {self.name(self.default)}")
        return value

    def name(self, value: float) -> str:
        return f"{self.prefix}-{int(value) if self.integer else f'{value:g}'}"


def _timestep_of(pipe) -> Callable[[], float]:
    """The current timestep, as PAB and FasterCache ask for it: the pipeline's own (Flux, SD3) when it has one."""
    return lambda: float(pipe.current_timestep)


def _fbc(pipe, cases, value):
    from diffusers.hooks import FirstBlockCacheConfig

    from ..denoiser import denoiser

    denoiser(pipe).enable_cache(FirstBlockCacheConfig(threshold=value))


def _taylorseer(pipe, cases, value):
    from diffusers.hooks import TaylorSeerCacheConfig

    from ..denoiser import denoiser

    module = denoiser(pipe)
    # the factors in the denoiser's own dtype: diffusers' bf16 default would round an fp32 run's predictions
    module.enable_cache(TaylorSeerCacheConfig(cache_interval=int(value), disable_cache_before_step=2, max_order=1,
                                              taylor_factors_dtype=next(module.parameters()).dtype))


def _faster(pipe, cases, value):
    from diffusers.hooks import FasterCacheConfig

    from .._quiet import quiet_diffusers
    from ..denoiser import denoiser

    # Flux and SD3 run classifier-free guidance (if at all) as separate calls, never as one doubled batch,
    # so FasterCache's unconditional-batch skipping does not apply: only its attention reuse does
    config = FasterCacheConfig(
        spatial_attention_block_skip_range=int(value), spatial_attention_timestep_skip_range=(-1, 901),
        current_timestep_callback=_timestep_of(pipe), is_guidance_distilled=True, tensor_format="BCHW")
    with quiet_diffusers():  # "FasterCache is a purely experimental feature", "no attention_weight_callback"
        denoiser(pipe).enable_cache(config)


def _pab(pipe, cases, value):
    from diffusers.hooks import HookRegistry, PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

    from ..denoiser import denoiser

    module = denoiser(pipe)
    if hasattr(module, "enable_cache"):
        module.enable_cache(PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=int(value), spatial_attention_timestep_skip_range=(100, 901),
            current_timestep_callback=_timestep_of(pipe)))
        return
    # A UNet has no enable_cache and its pipelines no current_timestep, and nothing resets the hooks' state
    # after a call (the pipeline resets only CacheMixin components): the UNet's own timestep argument tells
    # both, a timestep above the last one starting a new call.
    seen: dict[str, float] = {}

    def note_timestep(unet, args, kwargs):
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        t = float(t.flatten()[0]) if hasattr(t, "flatten") else float(t)
        if "t" in seen and t > seen["t"]:
            HookRegistry.check_if_exists_or_initialize(unet).reset_stateful_hooks()
        seen["t"] = t

    module.register_forward_pre_hook(note_timestep, with_kwargs=True)
    apply_pyramid_attention_broadcast(module, PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=int(value), cross_attention_block_skip_range=int(value),
        spatial_attention_timestep_skip_range=(100, 901), cross_attention_timestep_skip_range=(100, 901),
        current_timestep_callback=lambda: seen.get("t", 1000.0)))


def _deepcache(pipe, cases, value):
    from DeepCache import DeepCacheSDHelper

    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=int(value), cache_branch_id=0)
    helper.enable()  # the wrapped forwards hold the helper: it lives as long as the UNet


def _mag_cache(pipe, cases, value):
    """MagCache with its magnitude ratios calibrated here: diffusers' calibration mode run on the prompt set."""
    import torch
    from diffusers.hooks import MagCacheConfig
    from diffusers.hooks.hooks import HookRegistry
    from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK

    from ..cases import load_prompts
    from ..denoiser import denoiser

    module = denoiser(pipe)
    base = list(cases) if cases else load_prompts("seed002")[:2]
    steps = base[0].steps
    # one step more than the run has, so the calibration state survives to the last step's callback, where it
    # is read (diffusers otherwise prints the ratios and clears them inside the last step)
    module.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps + 1))
    tail = [m for m in module.modules() if getattr(m, "_diffusers_hook", None) is not None
            and m._diffusers_hook.get_hook(_MAG_CACHE_BLOCK_HOOK) is not None
            and m._diffusers_hook.get_hook(_MAG_CACHE_BLOCK_HOOK).is_tail][0]
    manager = tail._diffusers_hook.get_hook(_MAG_CACHE_BLOCK_HOOK).state_manager
    runs: list[list[float]] = []

    def read_ratios(pipe_, step, timestep, callback_kwargs):
        if step == steps - 1:
            runs.extend(list(s.calibration_ratios) for s in manager._state_cache.values())
        return callback_kwargs

    with torch.no_grad():
        for case in base:
            call = case.with_overrides(steps=steps)
            pipe(generator=torch.Generator("cpu").manual_seed(call.seed), callback_on_step_end=read_ratios,
                 **call.pipeline_kwargs())
    module.disable_cache()
    HookRegistry.check_if_exists_or_initialize(module).reset_stateful_hooks()
    ratios = [r for r in runs if len(r) == steps]
    if not ratios:
        raise LabError(f"MagCache calibration recorded no magnitude ratios over {len(base)} prompt(s)")
    mean = [sum(col) / len(col) for col in zip(*ratios)]
    module.enable_cache(MagCacheConfig(threshold=value, num_inference_steps=steps, mag_ratios=mean))


SPECS: dict[str, CacheSpec] = {s.prefix: s for s in (
    CacheSpec("first-block-cache", "threshold", False, 0.0, 1.0, 0.08, True,
              "first-block cache: the rest of the denoiser skipped while the first block's residual changes less "
              "than the threshold (relative)", _fbc),
    CacheSpec("taylorseer", "cache interval", True, 2, 50, 4, True,
              "TaylorSeer: attention outputs predicted by a first-order Taylor series, computed every N steps", _taylorseer),
    CacheSpec("mag-cache", "threshold", False, 0.0, 1.0, 0.06, True,
              "MagCache: whole passes skipped while the accumulated residual-magnitude error stays under the "
              "threshold; magnitude ratios calibrated on the prompt set", _mag_cache),
    CacheSpec("faster-cache", "attention skip range", True, 2, 50, 2, True,
              "FasterCache: attention outputs reused for N-1 of every N steps, extrapolated from the last two", _faster),
    CacheSpec("deepcache", "cache interval", True, 2, 50, 3, False,
              "DeepCache (the DeepCache package): a UNet's deep blocks computed every N steps, their features reused "
              "in between (only the shallowest branch runs)", _deepcache,
              fit=needs_denoiser("unet", "DeepCache wraps a UNet's down, mid and up blocks"),
              check=needs_package("DeepCache", "pip install DeepCache"), needs="DeepCache, a UNet"),
    CacheSpec("pab", "attention skip range", True, 2, 50, 2, False,
              "Pyramid Attention Broadcast: attention outputs broadcast (reused) for N-1 of every N steps in the "
              "middle of the schedule (UNet too, through diffusers' hook)", _pab),
)}
PATTERN = re.compile(r"^(" + "|".join(re.escape(p) for p in SPECS) + r")-(.+)$")
PARAMETRIC = {f"{s.prefix}-<{'N' if s.integer else 'T'}>": f"{s.about}; {s.setting} {s.allowed()}"
              for s in SPECS.values()}


def _needs_mixin(spec: CacheSpec) -> Fit:
    def fit(kind) -> str | None:
        if not spec.mixin or kind.cache:
            return None
        return (f"{spec.prefix} needs a denoiser that is a diffusers CacheMixin (enable_cache); "
                f"{kind.pipeline}'s {kind.label} ({kind.denoiser_class}) is not one")

    return fit


def recipe(spec: CacheSpec, value: float) -> Recipe:
    """The recipe of cache ``spec`` at setting ``value``."""
    name = spec.name(value)
    needs = "a CacheMixin denoiser (FLUX.1, ...)" if spec.mixin else spec.needs
    return Recipe(name, f"{spec.about} ({spec.setting} {value:g})", "cache", needs, slots=("cache",),
                  apply_fn=lambda pipe, cases: spec.apply(pipe, cases, value), check_fn=spec.check,
                  fit_fn=all_fits(_needs_mixin(spec), spec.fit))


def parametric(name: str) -> Recipe | None:
    """A cache recipe from its name (``first-block-cache-0.12``); None if the name is not a cache's."""
    if (m := PATTERN.match(name)) is None:
        return None
    spec = SPECS[m.group(1)]
    return recipe(spec, spec.value(m.group(2)))


def recipes() -> list[Recipe]:
    """One listed recipe per cache, at its default setting (any other setting parses by name)."""
    return [recipe(s, s.default) for s in SPECS.values()]


def is_cache(plan) -> bool:
    return any(r.family == "cache" for r in plan.recipes)


# -- what a cache computed and skipped ----------------------------------------------------------------
def _first_linear(module):
    import torch

    return next((m for m in module.modules() if isinstance(m, torch.nn.Linear)), None)


@contextlib.contextmanager
def count_evaluations(pipe) -> Iterator[dict]:
    """Count, while inside, the denoiser's calls and how many of its blocks and attention layers computed.

    A block or attention layer computed when its first linear layer ran: a cache that skips one returns without
    calling it. Yields a dict filled on exit: ``denoiser_calls``, ``blocks_computed``/``blocks_skipped``
    (transformer blocks), ``attention_computed``/``attention_skipped``; skipped = calls x units - computed.
    """
    from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS, _ATTENTION_CLASSES

    from ..denoiser import denoiser

    module = denoiser(pipe)
    blocks = [b for name, child in module.named_children() if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS
              and hasattr(child, "__iter__") for b in child]
    attention = [m for m in module.modules() if isinstance(m, _ATTENTION_CLASSES)]
    counts = {"denoiser_calls": 0, "blocks": 0, "attention": 0}
    handles = [module.register_forward_pre_hook(lambda *_: counts.__setitem__("denoiser_calls",
                                                                             counts["denoiser_calls"] + 1))]
    for unit, units in (("blocks", blocks), ("attention", attention)):
        for part in units:
            if (leaf := _first_linear(part)) is not None:
                handles.append(leaf.register_forward_pre_hook(
                    lambda *_, unit=unit: counts.__setitem__(unit, counts[unit] + 1)))
    out: dict = {}
    try:
        yield out
    finally:
        for h in handles:
            h.remove()
        calls = counts["denoiser_calls"]
        out["denoiser_calls"] = calls
        for unit, units in (("blocks", blocks), ("attention", attention)):
            if units:
                out[f"{unit}_computed"] = counts[unit]
                out[f"{unit}_skipped"] = max(0, calls * len(units) - counts[unit])


def skipped_fraction(skips: dict | None) -> float | None:
    """The share of evaluations a cache skipped: of blocks where it skips blocks, else of attention layers."""
    if not skips:
        return None
    for unit in ("blocks", "attention"):
        done, skipped = skips.get(f"{unit}_computed"), skips.get(f"{unit}_skipped")
        if done is not None and skipped and done + skipped:
            return skipped / (done + skipped)
    return 0.0 if any(k.endswith("_computed") for k in skips) else None


INCOMPATIBLE: dict[frozenset[str], str] = {}


def names_for(values: Sequence[float], prefix: str) -> list[str]:
    """Recipe names of cache ``prefix`` at several settings (a threshold sweep)."""
    spec = SPECS[prefix]
    return [spec.name(spec.value(str(v))) for v in values]
