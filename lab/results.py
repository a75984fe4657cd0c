"""A dataclass base that round-trips through JSON and renders as a table."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, TypeVar

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


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` through ``write(file)`` into a temporary file beside it, fsync, then rename.

    Readers see the old file or the whole new one, never a partial or 0-byte file: on any failure
    (a full disk, a read-only remount, Ctrl-C) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically (see ``atomic_write``)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Replace ``path`` with ``text`` atomically (see ``atomic_write``)."""
    return atomic_write_bytes(path, text.encode(encoding))


def save_image(image, path: str | os.PathLike) -> Path:
    """Save a PIL image as PNG atomically: no 0-byte or truncated PNG is ever left at ``path``."""
    return atomic_write(path, lambda f: image.save(f, format="PNG"))


class Record:
    """Mixin for result/config dataclasses: ``to_dict`` / ``from_dict`` / ``save`` / ``load``."""

    # old field name -> new one: files written before a rename still load
    renamed: ClassVar[dict[str, str]] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        hints = typing.get_type_hints(cls)
        data = {cls.renamed.get(k, k): v for k, v in data.items()}
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
        return atomic_write_text(path, self.to_json() + "\n")  # never a half-written results file

    @classmethod
    def load(cls: type[T], path: str | os.PathLike) -> T:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))
