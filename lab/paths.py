"""File names from user text, paths checked to stay inside their folder, and the lock on a command's --out.

Prompts, case names and recipe strings become file names only through ``file_stem`` (a bounded slug, with a
short hash whenever the text is not already a safe name, so two texts never share a file), and every path
lab writes or deletes under a folder it was given goes through ``inside``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from ._checks import LabError

LOCK = ".lock"
MAX_STEM = 80  # characters of a file name lab derives; well under every file system's 255 bytes
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def short_hash(*parts: object, length: int = 8) -> str:
    """A short, stable hex digest of ``parts`` (JSON-encoded): what makes derived names unique."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()[:length]


def slug(text: str, limit: int = 48) -> str:
    """Lower-case letters, digits and single dashes: no separator, dot, space or control character survives."""
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return words[:limit].rstrip("-")


def is_safe_stem(name: str) -> bool:
    """``name`` can be a file name as it is: letters, digits, '.', '_', '-', bounded, no '..'."""
    return bool(_SAFE.fullmatch(name)) and len(name) <= MAX_STEM and ".." not in name


def file_stem(name: str) -> str:
    """The file name lab uses for ``name``: itself when already safe, else its slug and a short hash of it."""
    if is_safe_stem(name):
        return name
    return f"{slug(name) or 'x'}-{short_hash(name)}"


def inside(base: str | os.PathLike, *parts: str) -> Path:
    """``base/parts...``, refused (``LabError``) unless it resolves to a path within ``base``."""
    path = Path(base).joinpath(*parts)
    root = Path(base).resolve()
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise LabError(f"refusing to write {str(path)!r}: it resolves to {str(resolved)!r}, outside {str(root)!r}")
    return path


@contextlib.contextmanager
def run_lock(out: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``<out>/.lock`` while a command writes into ``out``; a second one fails at once."""
    import fcntl
    import socket
    import sys

    out = Path(out)
    path = out / LOCK
    # Read-only descriptor: flock does not need write access, and an open writable file would keep the
    # file system from being remounted read-only (the note below is written through a short-lived one).
    # O_NONBLOCK: a FIFO planted at .lock must not hang the open.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NONBLOCK, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LabError(f"{str(path)!r} is not a regular file; remove it or pass another --out")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip() or "another process"
            raise LabError(f"directory {str(out)!r} is in use by {holder}; wait for it to finish or pass "
                           "another --out") from None
        info = (f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} "
                f"({' '.join(sys.argv)[:200]!r})")
        with contextlib.suppress(OSError), open(path, "w", encoding="utf-8") as note:
            note.write(info)  # the lock itself is what matters; the note names the holder to a second process
        yield
    finally:
        os.close(fd)  # closing releases the flock; the file stays (unlinking it would race a waiter)
