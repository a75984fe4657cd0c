"""The recipe type and the checks recipes share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..env import RecipeEnv

COMPONENTS = {"text": "text_encoder", "unet": "unet", "vae": "vae"}
Check = Callable[[RecipeEnv], "str | None"]


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

    def check(self, env: RecipeEnv) -> str | None:
        return self.check_fn(env) if self.check_fn else None

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
