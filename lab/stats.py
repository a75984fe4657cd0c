"""Summary statistics of repeated measurements."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

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
