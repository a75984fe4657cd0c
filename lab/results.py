"""A dataclass base that round-trips through JSON and renders as a table."""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T", bound="Record")


def _decode(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _decode(inner[0], value) if len(inner) == 1 else value
    if dataclasses.is_dataclass(tp):
        return tp.from_dict(value)
    if origin is list:
        return [_decode(args[0], v) for v in value] if args else list(value)
    if origin is tuple:
        return tuple(value)
    if origin is dict:
        return {k: _decode(args[1], v) for k, v in value.items()} if args else dict(value)
    return value


class Record:
    """Mixin for result/config dataclasses: ``to_dict`` / ``from_dict`` / ``save`` / ``load``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"{cls.__name__}.from_dict: unknown fields {sorted(unknown)}")
        return cls(**{k: _decode(hints[k], v) for k, v in data.items()})

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=True)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json() + "\n", encoding="utf-8")
        os.replace(tmp, path)  # never leave a half-written results file behind
        return path

    @classmethod
    def load(cls: type[T], path: str | os.PathLike) -> T:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))
