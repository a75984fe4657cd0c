"""Early, explicit validation of user-supplied names and paths."""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


class LabError(ValueError):
    """A bad input to lab, with a message that says what is allowed."""


def choose(kind: str, value: object, allowed: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``allowed``; otherwise raise naming close matches."""
    allowed = list(allowed)
    if isinstance(value, str) and value in allowed:
        return value
    close = difflib.get_close_matches(str(value), allowed, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise LabError(f"unknown {kind} {value!r}.{hint} Valid {kind}s: {', '.join(allowed)}.")


def positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LabError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


def writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and prove it is writable, before any heavy work starts."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".lab-write-test-"):
            pass
    except OSError as err:
        raise LabError(
            f"output directory {str(path)!r} is not writable ({err.strerror or err}). "
            "Pass a directory you can write to, e.g. --out runs/my-run."
        ) from err
    return path
