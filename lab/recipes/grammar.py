"""The recipe grammar: names joined by ``+``, checked for conflicts, applied in a fixed order."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .._checks import LabError
from ..denoiser import ModelKind
from ..env import RecipeEnv
from . import attention, caches, compile, layout, loading, memory, precision, quantization, runtimes, schedulers, threads
from .base import Recipe

# One module per family: each holds its recipes and the combinations it cannot take part in.
FAMILIES = (precision, attention, layout, compile, quantization, schedulers, memory, loading, threads, runtimes, caches)
# load-time recipes act while the pipeline loads, before anything else; threads are set before any work
ORDER = {"loading": 1, "threads": 5, "precision": 10, "attention": 20, "fusion": 25, "layout": 30, "quantization": 40,
         "scheduler": 50, "steps": 55, "cache": 57, "caching": 58, "memory": 60, "runtime": 65, "compile": 70}
INCOMPATIBLE: dict[frozenset[str], str] = {pair: why for family in FAMILIES for pair, why in family.INCOMPATIBLE.items()}


@lru_cache(maxsize=1)
def _catalog() -> dict[str, Recipe]:
    return {r.name: r for family in FAMILIES for r in family.recipes()}


def get(name: str) -> Recipe:
    """One recipe by name, including the parametric ``steps-<N>`` and ``guidance-<G>``."""
    if name in _catalog():
        return _catalog()[name]
    if (recipe := schedulers.parametric(name)) is not None:
        return recipe
    if (recipe := threads.parametric(name)) is not None:
        return recipe
    if (recipe := caches.parametric(name)) is not None:  # a cache at another setting (a bad one is refused)
        return recipe
    close = difflib.get_close_matches(name, list(_catalog()) + list(schedulers.PARAMETRIC) + list(threads.PARAMETRIC)
                                      + list(caches.PARAMETRIC),
                                      n=4, cutoff=0.6)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise LabError(f"unknown recipe {name!r}.{hint} See lab.recipes.catalog() for all {len(_catalog())} names.")


def names() -> list[str]:
    return list(_catalog())


@dataclass(frozen=True)
class Plan:
    """A validated composition of recipes, in application order."""

    text: str
    recipes: tuple[Recipe, ...]

    def check(self, env: RecipeEnv) -> dict[str, str]:
        """Recipes that cannot apply here, with the reason (empty: all can)."""
        return {r.name: why for r in self.recipes if (why := r.check(env))}

    def fits(self, kind: ModelKind) -> dict[str, str]:
        """Recipes that cannot apply to a model of this kind (a component it lacks, a scheduler of the other
        family, a UNet-only technique on a transformer), with the reason (empty: all can)."""
        return {r.name: why for r in self.recipes if (why := r.fits(kind))}

    def apply(self, pipe, cases: Sequence | None = None):
        for recipe in self.recipes:
            recipe.apply(pipe, cases)
        return pipe

    def load_options(self, folder, dtype) -> dict[str, Any] | None:
        """What the load-time recipes pass to ``from_pretrained`` (``quantization_config``, components); None
        when the plan has none."""
        parts = [r.load_fn(folder, dtype) for r in self.recipes if r.load_fn is not None]
        if not parts:
            return None
        from ..loadtime import pipeline_quantization

        mapping = {k: v for p in parts for k, v in p.get("quant_mapping", {}).items()}
        options: dict[str, Any] = {k: v for p in parts for k, v in p.get("components", {}).items()}
        if mapping:
            options["quantization_config"] = pipeline_quantization(mapping)
        return options

    def case_overrides(self) -> dict[str, Any]:
        return {k: v for r in self.recipes for k, v in r.case_overrides}


def parse(text: str) -> Plan:
    """Parse ``"a+b+c"`` into a ``Plan``; unknown names and impossible combinations are refused."""
    if not isinstance(text, str) or not text.strip():
        raise LabError(f"a recipe string must be non-empty, e.g. 'bf16+sdpa', got {text!r}")
    parts = [p.strip() for p in text.split("+")]
    if "" in parts:
        raise LabError(f"recipe string {text!r} has an empty part")
    recipes = [get(p) for p in parts]
    dupes = {p for p in parts if parts.count(p) > 1}
    if dupes:
        raise LabError(f"recipe string {text!r} names {sorted(dupes)} twice")
    owner: dict[str, str] = {}
    for rec in recipes:
        for slot in rec.slots:
            if slot in owner:
                raise LabError(f"cannot combine {owner[slot]!r} and {rec.name!r}: both set {slot}")
            owner[slot] = rec.name
    for i, a in enumerate(recipes):
        for b in recipes[i + 1:]:
            if why := INCOMPATIBLE.get(frozenset((a.name, b.name))):
                raise LabError(f"cannot combine {a.name!r} and {b.name!r}: {why}")
    ordered = sorted(recipes, key=lambda rec: ORDER[rec.family])
    return Plan(text=text, recipes=tuple(ordered))


def fitting(names: Sequence[str], model: str) -> list[str]:
    """The recipe strings of ``names`` that can apply to ``model`` (all of them for a hub id, known once loaded);
    a notebook lists recipes for every kind of model and keeps the ones that fit the one it runs."""
    from ..denoiser import model_kind

    kind = model_kind(model)
    return [n for n in names if kind is None or not parse(n).fits(kind)]


def fit_to_model(parts: Sequence[str], kind: ModelKind | None) -> tuple[list[str], list[str]]:
    """The recipe parts that can apply to a model of ``kind``, and one reason per part left out or swapped.

    A preset or plan is written for hardware; on a transformer model its UNet-only parts (attention slicing, a
    DDPM-style scheduler) are dropped with the reason, and fp16 becomes bf16 (FLUX.1 and SD3.5 overflow in fp16).
    """
    if kind is None:
        return list(parts), []
    kept, notes = [], []
    for part in parts:
        if part == "fp16" and kind.denoiser == "transformer":
            kept.append("bf16")
            notes.append(f"bf16 instead of fp16: {kind.pipeline}'s activations overflow fp16's range")
        elif why := get(part).fits(kind):
            notes.append(f"{part} left out: {why}")
        else:
            kept.append(part)
    return kept, notes


def catalog(env: RecipeEnv | None = None):
    """All recipes as a DataFrame: name, family, description, needs, and (with ``env``) why not here."""
    import pandas as pd

    rows = [{"name": r.name, "family": r.family, "description": r.description, "needs": r.needs}
            for r in _catalog().values()]
    rows += [{"name": name, "family": "steps", "description": text, "needs": ""}
             for name, text in schedulers.PARAMETRIC.items()]
    rows += [{"name": name, "family": "threads", "description": text, "needs": "CPU cores"}
             for name, text in threads.PARAMETRIC.items()]
    rows += [{"name": name, "family": "cache", "description": text,
              "needs": caches.recipe(spec, spec.default).needs}
             for (name, text), spec in zip(caches.PARAMETRIC.items(), caches.SPECS.values())]
    if env is not None:
        for row in rows:
            recipe = _catalog().get(row["name"])
            row["not_applicable"] = (recipe.check(env) if recipe else None) or ""
    return pd.DataFrame(rows).set_index("name")
