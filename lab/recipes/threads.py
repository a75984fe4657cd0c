"""The parametric recipe ``threads-<N>``: N intra-op and N inter-op CPU threads for the run.

Intra-op threads (``torch.set_num_threads``) can change at any time; inter-op threads
(``torch.set_num_interop_threads``) only once per process, before its first parallel work. An isolated worker
(lab.executors) sets them first thing, before the pipeline loads; in-process, where that moment has passed,
the run keeps the process's inter-op count, and ``RunRecord.threads`` records the counts in effect either way.
"""

from __future__ import annotations

import re

from .._checks import LabError
from ..threads import cpu_cores
from .base import Recipe

THREADS = re.compile(r"^threads-(\d+)$")
PARAMETRIC = {"threads-<N>": "N intra-op and inter-op CPU threads (1 to the cores here)"}


def set_threads(n: int) -> None:
    """N intra-op threads, and N inter-op threads where the process has not started parallel work yet."""
    import torch

    torch.set_num_threads(n)
    if torch.get_num_interop_threads() != n:
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # parallel work already ran here (in-process): the count in effect is recorded
            pass


def threads_of(text: str) -> int | None:
    """The N of a ``threads-<N>`` part of a recipe string (None when it has none)."""
    return next((int(m.group(1)) for part in text.split("+") if (m := THREADS.match(part.strip()))), None)


def _fits_cores(n: int):
    def check(env) -> str | None:
        cores = cpu_cores()
        return None if n <= cores else f"threads-{n} asks for more threads than the {cores} CPU cores here " \
                                       f"(threads-1 to threads-{cores})"
    return check


def parametric(name: str) -> Recipe | None:
    """``threads-<N>`` as a recipe; a malformed or non-positive N is refused, naming what is allowed."""
    if not name.startswith("threads-"):
        return None
    m = THREADS.match(name)
    if m is None or int(m.group(1)) < 1:
        raise LabError(f"recipe {name!r}: threads-<N> takes a whole number of threads N from 1 to the CPU cores "
                       f"(threads-1 to threads-{cpu_cores()} here)")
    n = int(m.group(1))
    return Recipe(name, f"{n} intra-op and {n} inter-op CPU threads", "threads", needs=f"{n} CPU cores",
                  slots=("threads",), apply_fn=lambda pipe, cases: set_threads(n), check_fn=_fits_cores(n))


def recipes() -> list[Recipe]:
    return []


INCOMPATIBLE: dict[frozenset[str], str] = {}
