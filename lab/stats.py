"""Summary statistics of repeated measurements."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from .results import Record


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), without importing numpy."""
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class Latency(Record):
    """Seconds per call over ``n`` steady-state repeats."""

    median: float
    mean: float
    std: float
    iqr: float
    p90: float
    min: float
    max: float
    n: int
    values: list[float] = field(default_factory=list)  # the repeats themselves (empty in files written before)

    @classmethod
    def from_values(cls, values: Sequence[float]) -> "Latency":
        if not values:
            raise ValueError("Latency.from_values needs at least one value")
        if any(v < 0 for v in values):
            raise ValueError(f"negative latency in {list(values)}: the clock was read out of order")
        s = sorted(values)
        return cls(
            median=statistics.median(s),
            mean=statistics.fmean(s),
            std=statistics.stdev(s) if len(s) > 1 else 0.0,
            iqr=_quantile(s, 0.75) - _quantile(s, 0.25),
            p90=_quantile(s, 0.9),
            min=s[0],
            max=s[-1],
            n=len(s),
            values=[float(v) for v in values],
        )

    @property
    def outlier_limit(self) -> float:
        """Above this a repeat is an outlier: twice the median; with 8 or more repeats also beyond
        median + 3 × IQR (but never within 20 % of the median). Below 8 repeats one slow value inflates the
        IQR itself, so only the ratio to the median can tell it apart."""
        if self.n >= 8:
            return min(2 * self.median, max(self.median + 3 * self.iqr, 1.2 * self.median))
        return 2 * self.median

    @property
    def has_outlier(self) -> bool:
        """Whether the slowest repeat lies above ``outlier_limit`` (a pause, a busy neighbour, a compile)."""
        return self.n >= 3 and self.max > self.outlier_limit

    @property
    def cv(self) -> float:
        """Coefficient of variation (std / mean)."""
        return self.std / self.mean if self.mean else 0.0

    @classmethod
    def pooled(cls, runs: Sequence["Latency"]) -> "Latency":
        """One Latency of several runs' repeats together (a baseline measured before and after the candidates)."""
        return cls.from_values([v for r in runs for v in (r.values or [r.median])])

    @property
    def noisy(self) -> bool:
        """The spread is large against the median (IQR over 10 % of it, as torch.utils.benchmark warns)."""
        return self.n >= 3 and self.iqr > NOISY_IQR * self.median


NOISY_IQR = 0.10
# a ratio within this of 1 is "not distinguishable" even when its interval excludes 1: on the 2-core VM, one
# computation measured at the start and the end of a quiet sweep moved by up to 12 % (docs/benchmarks.md,
# "Numbers on a busy machine"), so a smaller difference between two recipes is not one this host can tell
MIN_EFFECT = 0.10
VERDICTS = ("faster", "slower", "not distinguishable", "untrusted")


def _median_ratios(base: Sequence[float], other: Sequence[float], draws: int, rng) -> "list[float]":
    import numpy as np

    b, o = np.asarray(base, dtype=float), np.asarray(other, dtype=float)
    bi = rng.integers(0, len(b), size=(draws, len(b)))
    oi = rng.integers(0, len(o), size=(draws, len(o)))
    return np.log(np.median(b[bi], axis=1) / np.median(o[oi], axis=1))


def ratio_interval(pairs: Sequence[tuple[Latency, Latency]], level: float = 0.95, draws: int = 2000,
                   seed: int = 0) -> tuple[float, float]:
    """A bootstrap interval for the speed-up (baseline ÷ candidate median, geometric mean over matched runs).

    Each run's repeats are resampled on their own; runs recorded without their repeats (older files) give
    the widest interval their min and max allow.
    """
    import numpy as np

    if not pairs:
        raise ValueError("ratio_interval needs at least one (baseline, candidate) pair")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level!r}")
    rng = np.random.default_rng(seed)
    logs, fixed_lo, fixed_hi = [], 0.0, 0.0
    for base, other in pairs:
        if base.values and other.values:
            logs.append(_median_ratios(base.values, other.values, draws, rng))
        else:
            fixed_lo += math.log(base.min / other.max)
            fixed_hi += math.log(base.max / other.min)
    n = len(pairs)
    tail = (1 - level) / 2
    if logs:
        mean = np.sum(logs, axis=0)
        lo, hi = np.quantile(mean, tail) + fixed_lo, np.quantile(mean, 1 - tail) + fixed_hi
    else:
        lo, hi = fixed_lo, fixed_hi
    return math.exp(lo / n), math.exp(hi / n)


@dataclass
class Verdict(Record):
    """What a measured speed-up may be said to be: ``faster``, ``slower``, ``not distinguishable`` or ``untrusted``."""

    speedup: float
    low: float
    high: float
    verdict: str
    reason: str = ""

    @property
    def distinguishable(self) -> bool:
        return self.verdict in ("faster", "slower")

    def text(self) -> str:
        """The speed-up as a sentence may state it: the figure only when it can be believed."""
        span = f"{self.speedup:.2f}× (95 % interval {self.low:.2f}–{self.high:.2f})"
        if self.verdict in ("faster", "slower"):
            return f"{span}: {self.verdict}"
        if self.verdict == "untrusted":
            return f"no speed-up can be claimed ({self.reason}; measured {self.speedup:.2f}×): rerun on a quiet host"
        if self.low > 1 or self.high < 1:  # the interval excludes 1, but the difference is too small to claim
            return f"not distinguishable ({self.reason}: smaller than what this host's own drift produces)"
        return f"not distinguishable ({self.reason}): rerun with more repeats to tell them apart"


def judge(pairs: Sequence[tuple[Latency, Latency]], busy: str = "", min_effect: float = MIN_EFFECT) -> Verdict:
    """The verdict on a candidate against a baseline from matched (baseline, candidate) latencies.

    ``busy`` names the contention either run was measured under: then no verdict but ``untrusted``.
    """
    speedup = math.exp(statistics.fmean(math.log(b.median / o.median) for b, o in pairs))
    low, high = ratio_interval(pairs)
    if busy:
        return Verdict(speedup, low, high, "untrusted", f"host busy: {busy}")
    if low > 1 and speedup >= 1 + min_effect:
        return Verdict(speedup, low, high, "faster")
    if high < 1 and speedup <= 1 / (1 + min_effect):
        return Verdict(speedup, low, high, "slower")
    why = (f"interval {low:.2f}–{high:.2f} contains 1" if low <= 1 <= high
           else f"{speedup:.2f}× is within {min_effect:.0%} of 1")
    return Verdict(speedup, low, high, "not distinguishable", why)



def pareto_indices(points: Sequence[Sequence[float]], senses: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates; ``senses`` says per axis "min" or "max"."""
    sign = [1.0 if s == "min" else -1.0 for s in senses]
    if any(s not in ("min", "max") for s in senses):
        raise ValueError(f"senses must be 'min' or 'max', got {list(senses)}")
    keyed = [[v * k for v, k in zip(p, sign)] for p in points]
    front = []
    for i, p in enumerate(keyed):
        dominated = any(all(a <= b for a, b in zip(q, p)) and any(a < b for a, b in zip(q, p))
                        for j, q in enumerate(keyed) if j != i)
        if not dominated:
            front.append(i)
    return front
