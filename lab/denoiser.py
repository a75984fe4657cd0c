"""The pipeline's denoiser, found one way: the UNet of SD 1.5/2.1/XL or the transformer of FLUX.1/SD3.5.

Every part of lab that times, profiles, counts, optimizes or checks "the model that runs once per step" asks
here (``denoiser(pipe)``), so a recipe, a stage, a FLOP count or a diagnosis works on either kind. What a
model is (``ModelKind``: its denoiser, text encoders, scheduler family, cache support) is read from its
``model_index.json`` without loading it, so a recipe that cannot fit the model is refused before any work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._checks import LabError
from .results import Record

DENOISERS = ("transformer", "unet")  # attribute names on a diffusers pipeline, in lookup order
STEP_PREFIX = "denoiser_step_"
LEGACY_STEP_PREFIXES = ("unet_step_",)  # stage names of profiles and results written before the rename
# Scheduler classes that integrate a flow (velocity) field rather than denoise a DDPM-style noise schedule.
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler", "FlowMatchLCMScheduler")
# Denoiser classes that are diffusers CacheMixins (``enable_cache``) and that have ``_repeated_blocks``
# (regional compile), as of diffusers 0.42.1; read from the class itself when it can be imported.
_CACHE_MIXINS = ("FluxTransformer2DModel",)


def denoiser_name(pipe) -> str:
    """``"transformer"`` or ``"unet"``: the pipeline attribute holding its denoiser."""
    for name in DENOISERS:
        if getattr(pipe, name, None) is not None:
            return name
    raise LabError(f"{type(pipe).__name__} has no denoiser (neither a 'unet' nor a 'transformer' component); "
                   "lab measures UNet (SD 1.5/2.1/XL) and transformer (FLUX.1, SD3.5) pipelines")


def denoiser(pipe):
    """The module the pipeline runs once per denoising step (``pipe.transformer`` or ``pipe.unet``)."""
    return getattr(pipe, denoiser_name(pipe))


def text_encoder_names(pipe) -> list[str]:
    """The pipeline's text-encoder attributes that hold a module (``text_encoder``, ``_2``, ``_3``)."""
    return [n for n in ("text_encoder", "text_encoder_2", "text_encoder_3") if getattr(pipe, n, None) is not None]


def is_step_stage(stage: str) -> bool:
    """Whether a stage name is one denoising step (today's ``denoiser_step_i`` or the legacy ``unet_step_i``)."""
    return stage.startswith((STEP_PREFIX, *LEGACY_STEP_PREFIXES))


def step_stage(index: int) -> str:
    return f"{STEP_PREFIX}{index}"


def canonical_stage(stage: str) -> str:
    """A stage name in today's spelling (``unet_step_3`` -> ``denoiser_step_3``; ``unet`` -> ``denoiser``)."""
    for old in LEGACY_STEP_PREFIXES:
        if stage.startswith(old):
            return STEP_PREFIX + stage[len(old):]
    return "denoiser" if stage == "unet" else stage


@dataclass(frozen=True)
class ModelKind(Record):
    """What a pipeline is, read without loading it: its denoiser, components and scheduler family."""

    pipeline: str
    denoiser: str  # "unet" | "transformer"
    denoiser_class: str
    components: tuple[str, ...]  # the nn.Module components present (text encoders, denoiser, vae)
    scheduler: str
    flow_matching: bool
    cache: bool  # the denoiser is a diffusers CacheMixin (enable_cache)
    repeated_blocks: bool  # the denoiser declares _repeated_blocks (compile_repeated_blocks)

    @property
    def label(self) -> str:
        """``UNet`` or ``transformer``, for messages."""
        return "UNet" if self.denoiser == "unet" else "transformer"

    def lacks(self, component: str) -> str | None:
        """Why ``component`` cannot be targeted on this model (None: it is there)."""
        if component in self.components:
            return None
        have = ", ".join(self.components) or "none"
        return f"this {self.pipeline} has no {component} (its components: {have})"


def _denoiser_traits(cls_name: str) -> tuple[bool, bool]:
    try:
        import diffusers

        cls = getattr(diffusers, cls_name)
    except (ImportError, AttributeError):
        return cls_name in _CACHE_MIXINS, False
    cache = any(base.__name__ == "CacheMixin" for base in cls.__mro__)
    return cache, bool(getattr(cls, "_repeated_blocks", None))


def kind_from_index(index: dict[str, Any]) -> ModelKind:
    """A ``ModelKind`` from the contents of a ``model_index.json``."""
    def entry(name: str) -> str | None:
        value = index.get(name)
        return value[1] if isinstance(value, list) and len(value) == 2 and value[1] else None

    present = [n for n in DENOISERS if entry(n)]
    if not present:
        raise LabError(f"{index.get('_class_name', 'this pipeline')} has neither a 'unet' nor a 'transformer' "
                       "component; lab measures UNet and transformer text-to-image pipelines")
    name = present[0]
    components = tuple(n for n in ("text_encoder", "text_encoder_2", "text_encoder_3", name, "vae") if entry(n))
    scheduler = entry("scheduler") or ""
    cache, repeated = _denoiser_traits(entry(name) or "")
    return ModelKind(pipeline=str(index.get("_class_name", "")), denoiser=name, denoiser_class=entry(name) or "",
                     components=components, scheduler=scheduler, flow_matching=scheduler in FLOW_SCHEDULERS,
                     cache=cache, repeated_blocks=repeated)


def kind_of(pipe) -> ModelKind:
    """The ``ModelKind`` of a loaded pipeline."""
    name = denoiser_name(pipe)
    module = getattr(pipe, name)
    components = tuple(n for n in (*text_encoder_names(pipe), name, "vae") if getattr(pipe, n, None) is not None)
    scheduler = type(pipe.scheduler).__name__ if getattr(pipe, "scheduler", None) is not None else ""
    cache, repeated = _denoiser_traits(type(module).__name__)
    return ModelKind(pipeline=type(pipe).__name__, denoiser=name, denoiser_class=type(module).__name__,
                     components=components, scheduler=scheduler, flow_matching=scheduler in FLOW_SCHEDULERS,
                     cache=cache, repeated_blocks=repeated)


def model_kind(model: str) -> ModelKind | None:
    """The ``ModelKind`` of an embedded model or local diffusers folder; None for a hub id (known once loaded)."""
    from .models import EMBEDDED, check_model

    check_model(model)
    folder = EMBEDDED[model].folder if model in EMBEDDED else Path(model).expanduser()
    index = folder / "model_index.json"
    if not index.is_file():
        return None
    return kind_from_index(json.loads(index.read_text(encoding="utf-8")))


# -- inputs of one denoising step, for counting and fidelity -----------------------------------------
def latent_shape(pipe, height: int, width: int) -> tuple[int, ...]:
    """Shape of one image's initial latents as the pipeline's call takes them (Flux: packed 2x2 patches)."""
    module = denoiser(pipe)
    scale = pipe.vae_scale_factor
    if type(pipe).__name__.startswith("Flux"):
        channels = module.config.in_channels // 4
        h, w = 2 * (height // (scale * 2)), 2 * (width // (scale * 2))
        return (1, (h // 2) * (w // 2), channels * 4)
    return (1, module.config.in_channels, height // scale, width // scale)


def initial_latents(pipe, height: int, width: int, generator):
    """Seeded fp32 initial latents in the layout the call takes (Flux packs them, as its pipeline does)."""
    import torch

    module = denoiser(pipe)
    if type(pipe).__name__.startswith("Flux"):
        channels = module.config.in_channels // 4
        h, w = 2 * (height // (pipe.vae_scale_factor * 2)), 2 * (width // (pipe.vae_scale_factor * 2))
        noise = torch.randn((1, channels, h, w), generator=generator, dtype=torch.float32)
        return pipe._pack_latents(noise, 1, channels, h, w)
    return torch.randn(latent_shape(pipe, height, width), generator=generator, dtype=torch.float32)
