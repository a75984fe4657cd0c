"""Keep library chatter that says nothing to a lab user out of notebooks and terminals."""

from __future__ import annotations

import contextlib
import logging


@contextlib.contextmanager
def quiet_diffusers(level: int = logging.ERROR):
    """Log only diffusers messages at ``level`` or above: by default this silences its generic warning when
    casting modules built from configs with ``to()`` (they have no fp32-only parts, which it is about)."""
    from diffusers.utils import logging as diffusers_logging

    before = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(level)
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(before)


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' notices (e.g. that image processors fall back to PIL without torchvision): lab
    never runs those processors, and a notebook shows every notice as a red block."""
    import transformers

    level = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.utils.logging.set_verbosity(level)


@contextlib.contextmanager
def captured_stderr(lines: list[str]):
    """Send what C++ libraries (kineto, c10) and Python warnings print to stderr into ``lines`` instead.

    Notebooks show every stderr byte as a red block; the profiler's start/stop chatter says nothing to a
    lab user, so it is kept (deduplicated) in the result's notes instead of on screen.
    """
    import os
    import sys
    import tempfile
    import warnings

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace")
            seen = dict.fromkeys(line.strip() for line in text.splitlines() if line.strip())
            seen.update(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
            lines.extend(seen)
