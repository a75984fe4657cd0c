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


MAX_READ = 64 * 2**20  # bytes: a prompt set, a results file or a record larger than this is not one of ours


def read_file_bytes(path: str | os.PathLike, what: str, limit: int = MAX_READ) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit``; a FIFO, a device (``/dev/zero``), a directory,
    a missing or an oversized file is a ``LabError`` naming it, never a hang or a ``MemoryError``."""
    import stat

    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise LabError(f"{what} {str(path)!r} does not exist") from None
    except OSError as err:
        raise LabError(f"{what} {str(path)!r} cannot be read ({err.strerror or err})") from None
    if stat.S_ISDIR(mode):
        raise LabError(f"{what} {str(path)!r} is a directory; pass a file")
    if not stat.S_ISREG(mode):
        raise LabError(f"{what} {str(path)!r} is not a regular file (a FIFO, socket or device); pass a file")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise LabError(f"{what} {str(path)!r} cannot be read ({err.strerror or err})") from None
    if len(data) > limit:
        raise LabError(f"{what} {str(path)!r} is larger than {limit // 2**20} MiB; is it the right file?")
    return data


def read_text_file(path: str | os.PathLike, what: str, limit: int = MAX_READ) -> str:
    """The UTF-8 text of ``path`` (bounded, see ``read_file_bytes``); undecodable bytes are a ``LabError``."""
    data = read_file_bytes(path, what, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise LabError(f"{what} {str(path)!r} is not UTF-8 text (byte {err.start}: {err.reason})") from None


MAX_PROMPT = 10_000  # characters; CLIP reads 77 tokens, so a longer prompt is a pasted file, not a prompt


def check_prompt_text(name: str, value: str) -> str:
    """No NUL or other control character (tab and newline allowed), valid UTF-8 (argv's undecodable bytes
    arrive as surrogates), at most ``MAX_PROMPT`` characters."""
    if len(value) > MAX_PROMPT:
        raise LabError(f"{name} is {len(value)} characters long; at most {MAX_PROMPT} are allowed")
    for i, ch in enumerate(value):
        if "\udc80" <= ch <= "\udcff":
            raise LabError(f"{name} holds the byte 0x{ord(ch) - 0xDC00:02x} at character {i}, which is not UTF-8 "
                           "text; pass the prompt as UTF-8")
        if ch in "\t\n\r":
            continue
        if ord(ch) < 32 or ord(ch) == 127 or "\ud800" <= ch <= "\udfff":
            raise LabError(f"{name} holds the control character {ch!r} at character {i}; remove it")
    return value


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
