"""Benchmark cases (prompt + generation parameters) and validated prompt-set files."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ._checks import (LabError, check_guidance, check_prompt_text, check_seed, check_size, check_steps, check_text,
                      read_text_file)
from .env import REPO_ROOT
from .results import Record

PROMPTS_DIR = REPO_ROOT / "data" / "prompts"
PROMPT_FILE_LIMIT = 4 * 2**20  # bytes; the shipped sets are a few KB


@dataclass
class Case(Record):
    """One generation request: the unit that benchmarks, profiles and comparisons repeat."""

    prompt: str
    steps: int = 30
    guidance: float = 7.5
    name: str = ""
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        where = f"case {self.name or self.prompt!r}" if isinstance(self.name, str) else "case"
        try:
            check_prompt_text("prompt", check_text("prompt", self.prompt))
            check_steps(self.steps)
            check_guidance(self.guidance)
            if check_text("negative_prompt", self.negative_prompt, optional=True) is not None:
                check_prompt_text("negative_prompt", self.negative_prompt)
            for side in ("height", "width"):
                if getattr(self, side) is not None:
                    check_size(getattr(self, side), side)
            check_seed(self.seed)
            if not isinstance(self.name, str):
                raise LabError(f"name must be a string, got {self.name!r}.")
            check_prompt_text("name", self.name)
        except LabError as err:
            raise LabError(f"{where[:120]}: {err}") from None
        if not self.name:
            self.name = self._default_name()

    def _default_name(self) -> str:
        """The prompt's first four words as a slug; with a short hash of the prompt and parameters whenever that
        slug is not the whole prompt, so prompts sharing their first words keep their own names (and files)."""
        from .paths import short_hash, slug

        words = slug(" ".join(self.prompt.split()[:4]))
        if words and words == "-".join(self.prompt.lower().split()) and len(words) <= 48:
            return words
        params = {k: v for k, v in self.to_dict().items() if k != "name"}
        return f"{words or 'case'}-{short_hash(params, length=6)}"

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a diffusers text-to-image ``__call__`` (no generator)."""
        kwargs: dict[str, Any] = {
            "prompt": self.prompt,
            "num_inference_steps": self.steps,
            "guidance_scale": float(self.guidance),
        }
        if self.negative_prompt:
            kwargs["negative_prompt"] = self.negative_prompt
        if self.height:
            kwargs["height"] = self.height
        if self.width:
            kwargs["width"] = self.width
        return kwargs

    def with_overrides(self, **overrides: Any) -> "Case":
        """A copy with the non-None ``overrides`` applied (validated again)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


_CASE_FIELDS = {f.name for f in fields(Case)}


def default_prompts(model: str) -> str:
    """The prompt set a model is meant for: ``shapes`` for the embedded models trained here on shape scenes
    (``tiny``, ``tiny-flux``: they draw them, so adherence can be scored), ``seed002`` for every other model."""
    from .models import EMBEDDED

    return "shapes" if model in EMBEDDED and EMBEDDED[model].trained else "seed002"


def load_prompts(path: str | os.PathLike = "seed002") -> list[Case]:
    """Load a prompt set: a shipped name (``seed002``) or a JSON file ``{"cases": [...]}``."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise LabError(f"prompt set must be a shipped name or a .json path, got {path!r}")
    path = Path(path)
    if not path.suffix and not path.exists():
        shipped = sorted(p.stem for p in PROMPTS_DIR.glob("*.json"))
        if path.name not in shipped:
            raise LabError(f"unknown prompt set {str(path)!r}; shipped sets: {', '.join(shipped)}, or a .json path")
        path = PROMPTS_DIR / f"{path.name}.json"
    text = read_text_file(path, "prompt file", limit=PROMPT_FILE_LIMIT)  # missing, a FIFO, /dev/zero, not UTF-8
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise LabError(f"prompt file {str(path)!r} is not valid JSON: {err}") from None
    cases = data.get("cases") if isinstance(data, dict) else None
    if not isinstance(cases, list) or not cases:
        raise LabError(f"prompt file {str(path)!r} must be an object with a non-empty list 'cases'")
    out = []
    for i, raw in enumerate(cases):
        if not isinstance(raw, dict):
            raise LabError(f"prompt file {str(path)!r}, case {i}: expected an object, got {raw!r}")
        unknown = set(raw) - _CASE_FIELDS
        if unknown:
            raise LabError(
                f"prompt file {str(path)!r}, case {i}: unknown keys {sorted(unknown)}; "
                f"allowed: {', '.join(sorted(_CASE_FIELDS))}"
            )
        try:
            out.append(Case(**raw))
        except TypeError as err:
            raise LabError(f"prompt file {str(path)!r}, case {i}: {err}") from None
        except LabError as err:
            raise LabError(f"prompt file {str(path)!r}, case {i}: {err}") from None
    return out


NEGATIVE_TEMPLATES = REPO_ROOT / "data" / "templates" / "negative_prompts.json"


def negative_styles() -> dict[str, str]:
    """The shipped negative-prompt templates, style -> text (seed 000 §5.1)."""
    return json.loads(NEGATIVE_TEMPLATES.read_text(encoding="utf-8"))["styles"]


def negative_prompt(style: str, extra: str = "") -> str:
    """The template of ``style``, with ``extra`` terms appended."""
    from ._checks import choose

    styles = negative_styles()
    text = styles[choose("negative-prompt style", style, styles)]
    return f"{text}, {extra}" if extra else text


def with_negative(case: Case, style: str, extra: str = "") -> Case:
    """``case`` with the style's negative prompt as a generation parameter."""
    return case.with_overrides(negative_prompt=negative_prompt(style, extra))
