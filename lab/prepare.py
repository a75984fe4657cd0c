"""``prepare()``: the one way a model and a recipe become a ready pipeline and the cases to run on it.

Every entry point (``load_pipeline``, ``compare``, the Workbench, the ladder) goes through here, so a
recipe is parsed, checked against this machine, applied and its generation overrides (``steps-N``,
``guidance-G``) carried to the cases the same way everywhere.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._checks import LabError, choose
from .cases import Case
from .denoiser import kind_of, model_kind
from .env import RecipeEnv, torch_dtype
from .models import load_model
from .recipes import Plan, parse
from .schedulers import SCHEDULERS


@dataclass
class Prepared:
    """A pipeline with its recipe applied, or the reason the recipe cannot apply here (``pipe`` is None)."""

    recipe: str
    plan: Plan
    env: RecipeEnv
    pipe: Any = None
    cases: list[Case] = field(default_factory=list)  # the given cases with the recipe's generation overrides
    skipped: str | None = None
    apply_s: float | None = None


def prepare(model: str, recipe: str | Plan | None = None, *, device: str = "auto", dtype: str = "fp32",
            scheduler: str | None = None, cases: Sequence[Case] | Case = (), env: RecipeEnv | None = None,
            strict: bool = True) -> Prepared:
    """Load ``model``, check ``recipe`` against this machine and apply it; carry its overrides to ``cases``.

    Args:
        recipe: a recipe string (``"bf16+channels-last"``) or a parsed ``Plan``; None or ``""`` applies nothing.
        cases: cases to run on the result; the recipe's calibration (quanto activations) runs on them too.
        env: the machine to check against (default: detected for ``device``).
        strict: raise ``LabError`` when the recipe cannot apply here; otherwise return it with ``skipped`` set
            and no pipeline loaded.
    """
    torch_dtype(dtype)  # bad names are refused before anything loads, whatever the recipe
    if scheduler is not None:
        choose("scheduler", scheduler, SCHEDULERS)
    plan = recipe if isinstance(recipe, Plan) else parse(recipe) if recipe else Plan("", ())
    env = env or RecipeEnv.detect(device)
    cases = [cases] if isinstance(cases, Case) else list(cases)
    overrides = plan.case_overrides()
    prepared = Prepared(recipe=plan.text, plan=plan, env=env, cases=[c.with_overrides(**overrides) for c in cases])
    kind = model_kind(model)  # None for a hub id: its fit is checked once it has loaded
    if refused := _refusal(plan, env, kind, model, prepared, strict):
        return refused
    load = None
    if any(r.load_fn for r in plan.recipes):  # load-time recipes: the loader takes them, from weights on disk
        from .loadtime import load_refusal, model_folder

        if why := load_refusal(model):
            return _refused(prepared, {r.name: why for r in plan.recipes if r.load_fn}, model, strict)
        load = plan.load_options(model_folder(model), torch_dtype(dtype))
    pipe = load_model(model, dtype=dtype, device=env.device, scheduler=scheduler, load=load)
    pipe.lab_loaded_with = frozenset(r.name for r in plan.recipes if r.load_fn)
    if kind is None and (refused := _refusal(plan, env, kind_of(pipe), model, prepared, strict)):
        return refused
    start = time.perf_counter()
    plan.apply(pipe, prepared.cases)
    prepared.apply_s = time.perf_counter() - start
    prepared.pipe = pipe
    return prepared


def _refusal(plan: Plan, env: RecipeEnv, kind, model: str, prepared: Prepared, strict: bool) -> Prepared | None:
    """``prepared`` marked skipped (or a LabError when strict) if the plan cannot run here or on this model."""
    reasons = {**plan.check(env), **(plan.fits(kind) if kind is not None else {})}
    return _refused(prepared, reasons, model, strict) if reasons else None


def _refused(prepared: Prepared, reasons: dict[str, str], model: str, strict: bool) -> Prepared:
    plan = prepared.plan
    prepared.skipped = "; ".join(f"{k}: {v}" for k, v in reasons.items())
    if strict:
        raise LabError(f"recipe {plan.text!r} cannot apply to {model!r} here: {prepared.skipped}")
    return prepared


def load_pipeline(model: str = "tiny", *, dtype: str = "fp32", device: str = "auto", scheduler: str | None = None,
                  recipe: str | None = None):
    """Load a diffusers pipeline by embedded name, local folder or hub id, optionally with a recipe applied.

    Args:
        model: an embedded name (``tiny``, ``tiny-random``, ``sd15-arch``, ...: ``embedded_models()``), a local
            diffusers folder, or a hub id.
        dtype: ``fp32``, ``fp16`` or ``bf16``.
        device: ``auto``, ``cpu``, ``cuda[:N]`` or ``mps``.
        scheduler: a name from ``lab.schedulers.scheduler_names()``; None keeps the model's own.
        recipe: a recipe string checked and applied after loading. Its generation parts (``steps-N``,
            ``guidance-G``) belong to the call: ``prepare(...)`` returns the cases with them applied.
    """
    return prepare(model, recipe, device=device, dtype=dtype, scheduler=scheduler).pipe


class _CallableModule(type(sys.modules[__name__])):
    """Importing ``lab.prepare`` binds this module as the attribute ``lab.prepare``, hiding the function of the
    same name in lab's public API; calling the module calls the function, so ``lab.prepare(...)`` always works."""

    def __call__(self, *args, **kwargs) -> Prepared:
        return prepare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
