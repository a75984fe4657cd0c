"""Keep library chatter that says nothing to a lab user out of notebooks and terminals."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def quiet_diffusers():
    """Silence diffusers' generic warning when casting modules built from configs with ``to()``
    (they have no fp32-only parts, which is what that warning is about)."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)
