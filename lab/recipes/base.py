"""The recipe type and the checks recipes share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..denoiser import ModelKind, denoiser_name, text_encoder_names
from ..env import RecipeEnv

# short name in a recipe -> the component it targets. "denoiser" is the UNet or the transformer, whichever the
# model has (lab.denoiser); "unet" is the older spelling, kept for UNet models (refused on transformer ones).
COMPONENTS = {"text": "text_encoder", "denoiser": "denoiser", "unet": "unet", "vae": "vae"}
# what a whole-pipeline recipe (fp16, bf16, ...) covers: each part once
PARTS = ("text_encoder", "denoiser", "vae")
Check = Callable[[RecipeEnv], "str | None"]
Fit = Callable[[ModelKind], "str | None"]
# (the pipeline folder, the load dtype) -> what the loader takes: ``quant_mapping`` entries, whole ``components``
Load = Callable[..., "dict[str, Any]"]


def slot_component(component: str) -> str:
    """The slot a component's setting occupies: ``unet`` and ``denoiser`` are one slot (one module)."""
    return "denoiser" if component == "unet" else component


def modules_of(pipe, component: str) -> list[tuple[str, Any]]:
    """``(attribute, module)`` pairs a component name stands for on ``pipe`` (every text encoder for ``text_encoder``)."""
    if component == "text_encoder":
        names = text_encoder_names(pipe)
    elif component == "denoiser":
        names = [denoiser_name(pipe)]
    else:
        names = [component] if getattr(pipe, component, None) is not None else []
    return [(n, getattr(pipe, n)) for n in names]


@dataclass(frozen=True)
class Recipe:
    """One technique: ``check(env)`` says why it cannot apply (None if it can); ``apply(pipe)`` does it."""

    name: str
    description: str
    family: str
    needs: str = ""
    slots: tuple[str, ...] = ()  # what it sets: two recipes setting the same slot conflict
    case_overrides: tuple[tuple[str, Any], ...] = ()  # generation parameters it changes
    apply_fn: Callable[..., Any] | None = field(default=None, repr=False, compare=False)
    check_fn: Check | None = field(default=None, repr=False, compare=False)
    fit_fn: Fit | None = field(default=None, repr=False, compare=False)
    load_fn: Load | None = field(default=None, repr=False, compare=False)  # applied while loading (load-time)

    def check(self, env: RecipeEnv) -> str | None:
        return self.check_fn(env) if self.check_fn else None

    def fits(self, kind: ModelKind) -> str | None:
        """Why this recipe cannot apply to a model of this kind (None if it can)."""
        return self.fit_fn(kind) if self.fit_fn else None

    def apply(self, pipe, cases: Sequence | None = None):
        """Apply in place and return the pipeline; ``cases`` feed calibration where a recipe needs it."""
        if self.apply_fn is not None:
            self.apply_fn(pipe, cases)
        return pipe


def needs_cuda(what: str) -> Check:
    return lambda env: None if env.cuda else f"{what} needs a CUDA device (this is {env.device})"


def needs_package(package: str, hint: str) -> Check:
    return lambda env: None if package in env.packages else f"{package} is not installed ({hint})"


def needs_capability(minimum: tuple[int, int], what: str) -> Check:
    def check(env: RecipeEnv) -> str | None:
        if not env.cuda:
            return f"{what} needs an NVIDIA GPU of compute capability >= {minimum[0]}.{minimum[1]} (this is {env.device})"
        if env.cuda_capability is None or tuple(env.cuda_capability) < minimum:
            return (f"{what} needs compute capability >= {minimum[0]}.{minimum[1]} "
                    f"(this GPU is {env.cuda_capability})")
        return None

    return check


def all_of(*checks: Check) -> Check:
    def check(env: RecipeEnv) -> str | None:
        return next((r for r in (c(env) for c in checks) if r), None)

    return check


def needs_unet(name: str) -> Fit:
    """The ``unet`` spelling of a recipe: fits UNet models; on a transformer model, points to ``denoiser``."""
    def fit(kind: ModelKind) -> str | None:
        if kind.denoiser == "unet":
            return None
        return (f"{name} targets a UNet, and {kind.pipeline}'s denoiser is a transformer ({kind.denoiser_class}); "
                f"use {name.replace('unet', 'denoiser')}")

    return fit


def needs_denoiser(kind_name: str, why: str) -> Fit:
    """Fits only models whose denoiser is ``kind_name`` (``unet`` | ``transformer``)."""
    return lambda kind: None if kind.denoiser == kind_name else f"{why} ({kind.pipeline}'s denoiser is a {kind.label})"


def fits_component(component: str) -> Fit:
    """Fits models that have ``component`` (``unet`` also through ``needs_unet``)."""
    def fit(kind: ModelKind) -> str | None:
        if component in ("denoiser", "text_encoder"):
            return None if component == "denoiser" or any(c.startswith("text_encoder") for c in kind.components) \
                else kind.lacks("text_encoder")
        return kind.lacks(component)

    return fit


def all_fits(*fits: Fit | None) -> Fit:
    def fit(kind: ModelKind) -> str | None:
        return next((r for r in (f(kind) for f in fits if f) if r), None)

    return fit
