"""Scheduler recipes (one per named scheduler) and the generation parameters ``steps-<N>`` / ``guidance-<G>``."""

from __future__ import annotations

import re

from .._checks import LabError
from ..schedulers import SCHEDULERS, fits, set_scheduler
from .base import Recipe

STEPS = re.compile(r"^steps-(\d+)$")
GUIDANCE = re.compile(r"^guidance-(\d+(?:\.\d+)?)$")
PARAMETRIC = {"steps-<N>": "N denoising steps", "guidance-<G>": "guidance scale G"}


def _scheduler(name: str):
    return lambda pipe, cases: set_scheduler(pipe, name)


def recipes() -> list[Recipe]:
    return [Recipe(name, f"{SCHEDULERS[name][0]} scheduler", "scheduler", slots=("scheduler",),
                   apply_fn=_scheduler(name), fit_fn=lambda kind, name=name: fits(name, kind)) for name in SCHEDULERS]


def parametric(name: str) -> Recipe | None:
    """``steps-<N>`` or ``guidance-<G>`` as a recipe that only changes the generation parameters."""
    if m := STEPS.match(name):
        steps = int(m.group(1))
        if steps < 1:
            raise LabError(f"recipe {name!r}: steps must be >= 1")
        return Recipe(name, f"{steps} denoising steps", "steps", slots=("steps",), case_overrides=(("steps", steps),))
    if m := GUIDANCE.match(name):
        g = float(m.group(1))
        return Recipe(name, f"guidance scale {g:g}", "steps", slots=("guidance",), case_overrides=(("guidance", g),))
    return None


INCOMPATIBLE: dict[frozenset[str], str] = {}
