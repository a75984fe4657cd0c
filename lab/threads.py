"""CPU thread scaling (seed 002: "CPU多线程优化"): one ``threads-N`` run per thread count, from 1 to the cores.

``thread_sweep`` measures the same recipe with ``threads-1`` ... ``threads-<cores>`` through ``compare`` (each
count in its own worker by default, so each run sets its inter-op threads before any parallel work) and
returns a ``ThreadScaling``: latency and spread per count, speed-up and parallel efficiency against the
fewest threads, the fastest count, and the load average while it ran (other processes share the cores).
``lab.plots.plot_thread_scaling`` draws it; ``lab.hardware_plan(thread_scaling=...)`` uses its best count.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ._checks import LabError
from .results import Record

SCALING = "thread_scaling.json"  # beside the sweep's results.jsonl: ThreadScaling.load it for hardware_plan


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_threads(counts: Sequence[int]) -> list[int]:
    """Thread counts, sorted and unique, each from 1 to the cores here; anything else is refused."""
    cores = cpu_cores()
    counts = list(counts)
    bad = [n for n in counts if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= cores]
    if not counts or bad:
        raise LabError(f"thread counts must be whole numbers from 1 to {cores} (the CPU cores here), got "
                       f"{bad or counts!r}")
    return sorted(set(counts))


@dataclass
class ThreadPoint(Record):
    threads: int
    latency_s: float | None  # geometric mean of the runs' medians (as Comparison.to_frame)
    iqr_s: float | None
    speedup: float | None  # over the fewest threads measured
    efficiency: float | None  # speed-up / (threads / fewest threads): 1 = perfect scaling
    cpu_percent: float | None
    inter_op: int | None = None  # inter-op threads in effect (RunRecord.threads)
    status: str = "ok"
    verdict: str = ""  # against the fewest threads (lab.stats.judge); "" for the fewest and in older files


@dataclass
class ThreadScaling(Record):
    """Latency against CPU thread count for one recipe on one model (``thread_sweep``)."""

    model: str
    recipe: str  # what each count ran on top of ("" for the default fp32 pipeline)
    device: str
    cores: int
    points: list[ThreadPoint]
    out: str
    load_before: list[float] = field(default_factory=list)  # 1, 5, 15 min load averages when it started
    load_after: list[float] = field(default_factory=list)
    dtype: str = "fp32"  # the dtype the pipeline loaded in

    @property
    def label(self) -> str:
        """What each count ran: the dtype and the recipe on top of it."""
        return f"{self.dtype}" + (f" + {self.recipe}" if self.recipe else "")

    @property
    def measured(self) -> list[ThreadPoint]:
        """The counts that ran, fewest threads first."""
        return [p for p in self.points if p.latency_s is not None]

    @property
    def best(self) -> int | None:
        """The count to use: the fastest of the fewest threads and the counts distinguishably faster than it
        (a count that is not distinguishably faster only makes the machine busier); None when no count ran."""
        ok = self.measured
        if not ok:
            return None
        if any(p.verdict for p in ok):  # files written before verdicts have none: there, the lowest latency
            ok = [ok[0], *[p for p in ok[1:] if p.verdict == "faster"]]
        return min(ok, key=lambda p: p.latency_s).threads

    def why_best(self) -> str:
        """One line: why ``best`` was taken over the other counts."""
        ok = self.measured
        best = self.best
        if best is None:
            return "no thread count ran"
        judged = [p for p in ok[1:] if p.verdict]
        if not judged:
            return f"{best} threads: the fastest count measured"
        said = ", ".join(f"{p.threads}: {p.speedup:.2f}x, {p.verdict}" for p in judged)
        if best == ok[0].threads:
            return f"{best} threads: no count was distinguishably faster than {best} ({said})"
        return f"{best} threads: the fastest count distinguishably faster than {ok[0].threads} ({said})"

    def point(self, threads: int) -> ThreadPoint:
        return next(p for p in self.points if p.threads == threads)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([p.to_dict() for p in self.points]).set_index("threads")

    def to_markdown(self, digits: int = 3) -> str:
        load = lambda v: "/".join(f"{x:.2f}" for x in v) or "?"  # noqa: E731
        return (f"**{self.model}** {self.label} on {self.device}, {self.cores} cores; load average "
                f"{load(self.load_before)} before, {load(self.load_after)} after; {self.why_best()}\n\n"
                + self.to_frame().round(digits).to_markdown())

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    @classmethod
    def from_comparison(cls, comparison, recipe: str, counts: Sequence[int], device: str, **extra) -> "ThreadScaling":
        frame = comparison.to_frame()
        points = []
        for n in counts:
            text = _recipe(recipe, n)
            runs = [r for r in comparison.records if r.recipe == text]
            if text not in frame.index or not frame.loc[text, "ok"]:
                status = ",".join(sorted({r.status for r in runs})) or "not run"
                points.append(ThreadPoint(n, None, None, None, None, None, status=status))
                continue
            row = frame.loc[text]
            cpu = [r.cpu_percent for r in runs if r.cpu_percent is not None]
            inter = next((r.threads.get("inter_op") for r in runs if r.threads), None)
            verdict = comparison.verdict(text) if text != comparison.baseline else None
            points.append(ThreadPoint(n, float(row["latency_s"]), float(row["latency_iqr_s"]), None, None,
                                      sum(cpu) / len(cpu) if cpu else None, inter_op=inter,
                                      verdict=verdict.verdict if verdict else ""))
        first = next((p for p in points if p.latency_s is not None), None)
        for p in points:
            if first is not None and p.latency_s is not None:
                p.speedup = first.latency_s / p.latency_s
                p.efficiency = p.speedup / (p.threads / first.threads)
        return cls(model=comparison.model, recipe=recipe, device=device, cores=cpu_cores(), points=points,
                   out=comparison.out, **extra)


def _recipe(recipe: str, n: int) -> str:
    return f"{recipe}+threads-{n}" if recipe else f"threads-{n}"


def thread_sweep(model: str, cases, *, threads: Sequence[int] | None = None, recipe: str = "",
                 out: str | os.PathLike = "runs/threads", seeds: Sequence[int] = (0,), repeats: int = 3,
                 warmup: int = 1, dtype: str = "fp32", device: str = "cpu", progress: bool = True,
                 isolate: bool | None = None) -> ThreadScaling:
    """Measure ``recipe`` + ``threads-N`` for each N in ``threads`` (default 1 to the cores) on ``cases``.

    The fewest threads is the baseline of the underlying ``compare`` (``out`` holds its results.jsonl, so an
    interrupted sweep resumes, and ``thread_scaling.json``, the returned ``ThreadScaling``). Isolated workers
    (the default) set each run's inter-op threads before any parallel work; in-process (``isolate=False``) a
    process sets them once at most, so later counts keep what was set first (``RunRecord.threads`` says).
    """
    from .experiments import compare
    from .recipes.threads import threads_of

    if recipe and threads_of(recipe) is not None:
        raise LabError(f"recipe {recipe!r} already sets threads: pass the recipe without its threads-N part")
    counts = check_threads(range(1, cpu_cores() + 1) if threads is None else threads)
    before = list(os.getloadavg())
    comparison = compare(model, [_recipe(recipe, n) for n in counts], cases, seeds=seeds, repeats=repeats,
                         warmup=warmup, out=out, dtype=dtype, device=device, progress=progress, isolate=isolate)
    scaling = ThreadScaling.from_comparison(comparison, recipe, counts, device, load_before=before,
                                            load_after=list(os.getloadavg()), dtype=dtype)
    scaling.save(Path(comparison.out) / SCALING)
    return scaling
