"""Early, explicit validation of user-supplied names and paths."""

from __future__ import annotations

import contextlib
import difflib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
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
    plural = f"{kind[:-1]}ies" if kind.endswith("y") else f"{kind}s"
    raise LabError(f"unknown {kind} {value!r}.{hint} Valid {plural}: {', '.join(allowed)}.")


def positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LabError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


def _out_path(path: object) -> Path:
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise LabError(f"output directory must be a non-empty path, got {path!r}; e.g. --out runs/my-run.")
    return Path(path)


def writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and prove it is writable, before any heavy work starts."""
    path = _out_path(path)
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


# Upper bounds: beyond these a run is a typo, not an experiment (and would fail late or degenerate).
MAX_STEPS = 1000  # a DDPM-style scheduler has 1000 training timesteps; more steps repeat timesteps
MAX_SIZE = 4096  # pixels per side; 4096² is already 16× SDXL's native area
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed accepts a signed 64-bit value at most


def finite_number(name: str, value: object, minimum: float | None = None, maximum: float | None = None) -> float:
    """Return ``value`` as a float if it is a finite real number in [minimum, maximum]; else raise ``LabError``."""
    import math

    bounds = (f" >= {minimum}" if minimum is not None else "") + (f" and <= {maximum}" if maximum is not None else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LabError(f"{name} must be a finite number{bounds}, got {value!r}.")
    if not math.isfinite(value) or (minimum is not None and value < minimum) or (
            maximum is not None and value > maximum):
        raise LabError(f"{name} must be a finite number{bounds}, got {value!r}.")
    return float(value)


def bounded_int(name: str, value: object, minimum: int, maximum: int) -> int:
    """Return ``value`` if it is an integer in [minimum, maximum]; else raise ``LabError``."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise LabError(f"{name} must be an integer from {minimum} to {maximum}, got {value!r}.")
    return value


def check_steps(value: object, name: str = "steps") -> int:
    """Denoising steps: an integer from 1 to ``MAX_STEPS``."""
    return bounded_int(name, value, 1, MAX_STEPS)


def check_seed(value: object, name: str = "seed") -> int:
    """A generator seed: an integer from 0 to ``MAX_SEED`` (what ``torch.Generator.manual_seed`` takes)."""
    return bounded_int(name, value, 0, MAX_SEED)


def check_size(value: object, name: str = "size") -> int:
    """An image side in pixels: a multiple of 8 from 8 to ``MAX_SIZE``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 8 <= value <= MAX_SIZE or value % 8:
        raise LabError(f"{name} must be a multiple of 8 from 8 to {MAX_SIZE}, got {value!r}.")
    return value


def check_guidance(value: object, name: str = "guidance") -> float:
    """Classifier-free guidance scale: a finite number from 0 to 100."""
    return finite_number(name, value, 0, 100)


def check_text(name: str, value: object, *, optional: bool = False) -> str | None:
    """A non-empty string (or None when ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        allowed = "a non-empty string" + (" or None" if optional else "")
        raise LabError(f"{name} must be {allowed}, got {value!r}.")
    return value


def read_text_file(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of ``path``; a missing file, a directory or undecodable bytes are ``LabError``."""
    path = Path(path)
    if path.is_dir():
        raise LabError(f"{what} {str(path)!r} is a directory; pass a file")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabError(f"{what} {str(path)!r} does not exist") from None
    except UnicodeDecodeError as err:
        raise LabError(f"{what} {str(path)!r} is not UTF-8 text (byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise LabError(f"{what} {str(path)!r} cannot be read ({err.strerror or err})") from None


# What a sweep writes before its first result: a folder holding only these holds nothing to keep.
_BOOKKEEPING = {".lock", "comparison.json", "environment.json"}


@contextlib.contextmanager
def output_dir(path: str | os.PathLike) -> Iterator[Path]:
    """``writable_dir(path)`` for the duration of a command; if the command fails before writing any
    result, the folders it created are removed again (a model that fails to load leaves no empty --out)."""
    path = _out_path(path)
    top = None  # the highest folder this call creates
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        top = candidate
    out = writable_dir(path)
    try:
        yield out
    except BaseException:
        if top is not None and not _holds_results(top):
            shutil.rmtree(top, ignore_errors=True)
        raise


def _holds_results(folder: Path) -> bool:
    for _, _, files in os.walk(folder):
        if any(f not in _BOOKKEEPING and not f.endswith(".tmp") for f in files):
            return True
    return False
