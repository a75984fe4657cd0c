"""Benchmark cases (prompt + generation parameters) and validated prompt-set files."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ._checks import LabError
from .env import REPO_ROOT
from .results import Record

PROMPTS_DIR = REPO_ROOT / "data" / "prompts"


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
        where = f"case {self.name or self.prompt!r}"
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise LabError(f"{where}: prompt must be a non-empty string, got {self.prompt!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise LabError(f"{where}: steps must be an integer >= 1, got {self.steps!r}")
        if isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float)) or self.guidance < 0:
            raise LabError(f"{where}: guidance must be a number >= 0, got {self.guidance!r}")
        for side in ("height", "width"):
            value = getattr(self, side)
            if value is not None and (not isinstance(value, int) or value < 8 or value % 8):
                raise LabError(f"{where}: {side} must be a multiple of 8 (>= 8), got {value!r}")
        if not self.name:
            self.name = "-".join(self.prompt.lower().split()[:4])

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


def load_prompts(path: str | os.PathLike = "seed002") -> list[Case]:
    """Load a prompt set: a shipped name (``seed002``) or a JSON file ``{"cases": [...]}``."""
    path = Path(path)
    if not path.suffix and not path.exists():
        shipped = sorted(p.stem for p in PROMPTS_DIR.glob("*.json"))
        if path.name not in shipped:
            raise LabError(f"unknown prompt set {str(path)!r}; shipped sets: {', '.join(shipped)}, or a .json path")
        path = PROMPTS_DIR / f"{path.name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabError(f"prompt file {str(path)!r} does not exist") from None
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
