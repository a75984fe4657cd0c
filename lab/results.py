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


def _kind(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _decode(tp: Any, value: Any, where: str = "value") -> Any:
    """``value`` read from JSON as the annotation ``tp``; a value of another type is a ``TypeError`` naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise TypeError(f"{where} must be {_kind(tp)}, got None")
        errors = []
        for inner in (a for a in args if a is not type(None)):
            try:
                return _decode(inner, value, where)
            except (TypeError, ValueError, AttributeError) as err:
                errors.append(err)
        raise errors[0] if len(errors) == 1 else TypeError(f"{where} must be {_kind(tp)}, got {value!r:.80}")
    if value is None:
        if tp in (int, float, str, bool):
            raise TypeError(f"{where} must be {tp.__name__}, got None")
        return None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TypeError(f"{where} must be a {tp.__name__} object, got {value!r:.80}")
        return tp.from_dict(value)
    expected = {int: int, float: (int, float), str: str, bool: bool, list: (list, tuple), tuple: (list, tuple),
                dict: dict}.get(origin or tp)
    if expected is not None and (not isinstance(value, expected) or (tp is not bool and isinstance(value, bool))):
        raise TypeError(f"{where} must be {_kind(tp)}, got {value!r:.80}")
    if tp is float:
        return float(value)
    if origin is list:
        return [_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is tuple:
        return tuple(value)
    if origin is dict:
        return {k: _decode(args[1], v, f"{where}[{k!r}]") for k, v in value.items()} if args else dict(value)
    return value


# the permissions a plain open() would give a new file (mkstemp's are 0600); read once, at import
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` through ``write(file)`` into a temporary file beside it, fsync, then rename.

    Readers see the old file or the whole new one, never a partial or 0-byte file: on any failure
    (a full disk, a read-only remount, Ctrl-C) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)  # a colleague's report on a shared machine must be able to read it
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


def save_tensor(tensor, path: str | os.PathLike, name: str) -> Path:
    """Write one tensor as safetensors (no pickle) under ``name``, atomically, creating the folder."""
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, save({name: tensor.contiguous()}))


def load_tensor(path: str | os.PathLike, name: str):
    """The tensor ``name`` of a safetensors file (``save_tensor``)."""
    from safetensors.torch import load_file

    return load_file(str(path))[name]


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
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.from_dict: expected a JSON object, got {data!r:.80}")
        hints = typing.get_type_hints(cls)
        data = {cls.renamed.get(k, k): v for k, v in data.items()}
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"{cls.__name__}.from_dict: unknown fields {sorted(unknown)}")
        return cls(**{k: _decode(hints[k], v, f"{cls.__name__}.{k}") for k, v in data.items()})

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
        from ._checks import read_text_file

        return cls.from_json(read_text_file(path, f"{cls.__name__} file"))  # bounded; a FIFO or device refused
