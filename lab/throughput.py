"""Throughput: a batch sweep (prompts per call × images per prompt) of one recipe, and the largest batch that fits.

Per batch size: latency per call (median and IQR over repeats), images per second (images ÷ each repeat's
latency: median and IQR), peak memory attributable to the model (``lab.memory.model_peak_mb``) and the first
call. A batch that runs out of memory is recorded as ``oom`` and the larger ones as ``skipped``; one that fails
otherwise is ``error`` and the sweep goes on. ``largest_fit(budget)`` reads the measured points and, past the
largest measured batch, a straight line through peak memory against batch (marked as an estimate).
"""

from __future__ import annotations

import datetime as _dt
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from ._checks import LabError, positive_int
from .cases import Case
from .host import HostLoad, HostWatch
from .results import Record
from .stats import Latency, Verdict, _quantile, judge

MB = 2**20
STATUSES = ("ok", "oom", "error", "skipped")


@dataclass
class BatchPoint(Record):
    """One batch size: ``prompts`` per call, each with ``images_per_prompt`` images."""

    prompts: int
    images_per_prompt: int
    status: str  # ok | oom | error | skipped
    error: str | None = None
    latency: Latency | None = None  # seconds per call
    images_per_s: float | None = None  # median over repeats of images ÷ that repeat's seconds
    images_per_s_iqr: float | None = None
    peak_mem_mb: float | None = None  # weights + what a call adds over the RSS before it (CUDA: peak allocated)
    peak_rss_mb: float | None = None
    first_call_s: float | None = None
    host: HostLoad | None = None  # what else the host did during the timed calls (lab.host)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {self.status!r}")

    @property
    def images(self) -> int:
        return self.prompts * self.images_per_prompt

    def per_image(self) -> Latency:
        """Seconds per image of each timed call (its latency ÷ the images it made)."""
        values = self.latency.values or [self.latency.min, self.latency.median, self.latency.max]
        return Latency.from_values([v / self.images for v in values])


def batch_gain(single: BatchPoint, batched: BatchPoint) -> Verdict:
    """Whether ``batched`` makes images distinguishably faster than ``single`` (per image, ``lab.stats.judge``)."""
    busy = HostLoad.combine([p.host for p in (single, batched) if p.host and p.host.busy])
    return judge([(single.per_image(), batched.per_image())], busy="; ".join(busy.reasons) if busy else "")


@dataclass
class BatchFit(Record):
    """The largest batch (images per call) within a memory budget; ``estimated`` when read off the line fit."""

    budget_mb: float
    images: int | None
    estimated: bool = False
    reason: str = ""


@dataclass
class ThroughputResult(Record):
    """A batch sweep of one recipe on one model and case, with the environment it ran in."""

    model: str
    recipe: str
    device: str
    size: int | None
    steps: int
    warmup: int
    repeats: int
    points: list[BatchPoint]
    weight_mb: float | None = None
    env: dict = field(default_factory=dict)
    created: str = ""

    def ok(self) -> list[BatchPoint]:
        return sorted((p for p in self.points if p.status == "ok"), key=lambda p: p.images)

    def best(self, memory_budget_mb: float | None = None) -> BatchPoint | None:
        """The batch with the most images per second (within ``memory_budget_mb`` when given)."""
        fits = [p for p in self.ok() if memory_budget_mb is None or (p.peak_mem_mb or math.inf) <= memory_budget_mb]
        return max(fits, key=lambda p: p.images_per_s, default=None)

    def largest_fit(self, budget_mb: float) -> BatchFit:
        """The most images per call whose peak memory stays within ``budget_mb``: a measured point, or past the
        largest measured one a least-squares line of peak memory against images per call (two points at least)."""
        if not budget_mb > 0:
            raise LabError(f"budget_mb must be a positive number of MiB, got {budget_mb!r}")
        ok = [p for p in self.ok() if p.peak_mem_mb is not None]
        if not ok:
            return BatchFit(budget_mb, None, reason="no batch size ran")
        within = [p for p in ok if p.peak_mem_mb <= budget_mb]
        if not within:
            return BatchFit(budget_mb, None, reason=f"the smallest batch measured ({ok[0].images} images) needs "
                            f"{ok[0].peak_mem_mb:.0f} MiB")
        measured = max(within, key=lambda p: p.images)
        failed = [p for p in self.points if p.status == "oom"]
        larger = measured.images < ok[-1].images
        if larger or failed or len({p.images for p in ok}) < 2:
            why = "a larger batch ran out of memory" if failed else \
                "a larger measured batch exceeds it" if larger else "one batch size measured"
            return BatchFit(budget_mb, measured.images, reason=f"measured; {why}")
        slope, intercept = _line([p.images for p in ok], [p.peak_mem_mb for p in ok])
        if slope <= 0:
            return BatchFit(budget_mb, measured.images, reason="measured; peak memory does not grow with batch here")
        estimate = max(measured.images, int((budget_mb - intercept) // slope))
        return BatchFit(budget_mb, estimate, estimated=estimate > measured.images,
                        reason=f"peak ≈ {intercept:.0f} + {slope:.1f} MiB per image (fit over {len(ok)} batch sizes)")

    def to_frame(self):
        import pandas as pd

        rows = [{"batch": f"{p.prompts}×{p.images_per_prompt}", "prompts": p.prompts, "images_per_prompt": p.images_per_prompt, "images": p.images,
                 "latency_s": p.latency.median if p.latency else None, "latency_iqr_s": p.latency.iqr if p.latency
                 else None, "images_per_s": p.images_per_s, "images_per_s_iqr": p.images_per_s_iqr,
                 "peak_mem_mb": p.peak_mem_mb, "status": p.status if p.status == "ok" else f"{p.status}: {p.error}"}
                for p in self.points]
        return pd.DataFrame(rows).set_index("batch")

    def to_markdown(self) -> str:
        env = self.env
        return (self.to_frame().round(3).to_markdown() + f"\n\n{self.model}, `{self.recipe}`, {self.device}, "
                f"{self.size or 'default'}², {self.steps} steps, median of {self.repeats} after {self.warmup} "
                f"warm-up; {env.get('device_name', '')}, torch {env.get('packages', {}).get('torch', '')}, "
                f"{env.get('torch_threads', '')} threads")

    def _repr_markdown_(self) -> str:
        return self.to_markdown()


def _line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return slope, my - slope * mx


def _spread(values: Sequence[float]) -> tuple[float, float]:
    s = sorted(values)
    return statistics.median(s), _quantile(s, 0.75) - _quantile(s, 0.25)


def _is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(err).lower()


def _measure(pipe, kwargs: dict, images: int, seed: int, device: str, warmup: int, repeats: int,
             weights: int) -> BatchPoint:
    import time

    import psutil
    import torch

    from .env import synchronize
    from .memory import cuda_peaks, flush, model_peak_mb, peak_rss_bytes

    proc, seconds, peaks, first, rss_before, watches = psutil.Process(), [], [], None, None, []
    for i in range(warmup + repeats):
        flush(device)
        if i == warmup:
            rss_before = proc.memory_info().rss
        generator = torch.Generator("cpu").manual_seed(seed)
        synchronize(device)
        with HostWatch() as watch:
            start = time.perf_counter()
            with torch.no_grad():
                out = pipe(generator=generator, output_type="pil", **kwargs)
            synchronize(device)
            elapsed = time.perf_counter() - start
        if len(out.images) != images:
            raise RuntimeError(f"the call returned {len(out.images)} images, {images} expected")
        if i == 0:
            first = elapsed
        if i >= warmup:
            seconds.append(elapsed)
            watches.append(watch.load)
            peaks.append((peak_rss_bytes(), cuda_peaks(device)[0]))
    rate, rate_iqr = _spread([images / s for s in seconds])
    cuda = [c for _, c in peaks if c is not None]
    peak_rss = max(r for r, _ in peaks) / MB
    return BatchPoint(prompts=0, images_per_prompt=0, status="ok", latency=Latency.from_values(seconds),
                      images_per_s=rate, images_per_s_iqr=rate_iqr, peak_rss_mb=peak_rss, first_call_s=first,
                      host=HostLoad.combine(watches),
                      peak_mem_mb=model_peak_mb(weights, peak_rss, rss_before / MB,
                                                max(cuda) / MB if cuda else None))


def batch_sweep(model: str = "tiny", batches: Sequence[int] = (1, 2, 4), *, images_per_prompt: Sequence[int] = (1,),
                recipe: str = "", device: str = "auto", dtype: str = "fp32", case: Case | None = None,
                prompts: Sequence[str] | None = None, warmup: int = 1, repeats: int = 3,
                progress: bool = True) -> ThroughputResult:
    """Time one recipe at each batch size: ``batches`` prompts per call × ``images_per_prompt`` images each.

    Args:
        case: steps, size, guidance and seed of every call (default: the model's prompt set's first case).
        prompts: the prompts a call of n prompts takes the first n of, cycled (default: the model's prompt set).
        recipe: applied once; every batch size runs on the same pipeline, smallest first.
    """
    from tqdm.auto import tqdm

    from .cases import default_prompts, load_prompts
    from .env import Environment
    from .models import weight_bytes
    from .prepare import prepare

    sizes = sorted({positive_int("batch", b) for b in batches})
    per = sorted({positive_int("images_per_prompt", n) for n in images_per_prompt})
    if not sizes or not per:
        raise LabError("batch_sweep needs at least one batch size and one images_per_prompt value")
    positive_int("repeats", repeats)
    positive_int("warmup", warmup, minimum=0)
    default = load_prompts(default_prompts(model))
    case = case or default[0]
    texts = list(prompts) if prompts else [c.prompt for c in default]
    if not texts:
        raise LabError("batch_sweep needs at least one prompt")
    prepared = prepare(model, recipe or None, device=device, dtype=dtype, cases=[case])
    pipe, case = prepared.pipe, prepared.cases[0]
    weights = sum(weight_bytes(pipe).values())
    grid = sorted(((n, k) for n in sizes for k in per), key=lambda nk: (nk[0] * nk[1], nk))
    points: list[BatchPoint] = []
    oom_at: int | None = None
    for n, k in tqdm(grid, desc="batch sweep", unit="batch", disable=not progress):
        if oom_at is not None and n * k >= oom_at:
            points.append(BatchPoint(n, k, "skipped", error=f"a batch of {oom_at} images ran out of memory"))
            continue
        kwargs = case.pipeline_kwargs()
        kwargs["prompt"] = [texts[i % len(texts)] for i in range(n)]
        if case.negative_prompt:
            kwargs["negative_prompt"] = [case.negative_prompt] * n
        kwargs["num_images_per_prompt"] = k
        try:
            point = _measure(pipe, kwargs, n * k, case.seed, prepared.env.device, warmup, repeats, weights)
        except Exception as err:  # noqa: BLE001 - one batch size that fails never loses the sweep
            oom = _is_oom(err)
            oom_at = n * k if oom else oom_at
            point = BatchPoint(n, k, "oom" if oom else "error", error=f"{type(err).__name__}: {err}"[:300])
        point.prompts, point.images_per_prompt = n, k
        points.append(point)
    return ThroughputResult(model=model, recipe=recipe or dtype, device=prepared.env.device, size=case.height,
                            steps=case.steps, warmup=warmup, repeats=repeats, points=points, weight_mb=weights / MB,
                            env=Environment.capture(prepared.env.device).to_dict(),
                            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
