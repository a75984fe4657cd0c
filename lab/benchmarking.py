"""Honest latency benchmark of a pipeline over cases: warm-up, repeats, stage breakdown."""

from __future__ import annotations

import datetime as _dt
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from ._checks import LabError, positive_int, writable_dir
from .cases import Case
from .denoiser import denoiser
from .env import Environment, dtype_name
from .host import HostLoad, HostWatch
from .memory import cuda_peaks, flush, peak_rss_bytes
from .monitor import ResourceMonitor, ResourceSample
from .paths import file_stem, inside
from .power import Energy, EnergyMeter
from .results import Record, save_image
from .stats import Latency
from .timing import StageTimer, StageTimes

MB = 1024 * 1024
# the columns a notebook shows by default: one screen wide; to_frame() holds them all
SUMMARY_COLUMNS = ("steps", "median_s", "iqr_s", "denoiser_step_ms", "peak_rss_mb", "peak_cuda_alloc_mb", "images_per_s",
                   "energy_j_per_image", "error")


@dataclass
class StageSummary(Record):
    """Median seconds per stage over the steady-state repeats."""

    text_encoder: float
    denoiser: float  # the UNet or the transformer (lab.denoiser), all steps
    denoiser_per_step: float
    vae_decode: float
    other: float
    steps: list[float]  # median per denoising step index

    renamed = {"unet": "denoiser", "unet_per_step": "denoiser_per_step"}

    @classmethod
    def from_runs(cls, runs: Sequence[StageTimes]) -> "StageSummary":
        med = statistics.median
        n_steps = min(len(r.denoiser_steps) for r in runs)
        steps = [med(r.denoiser_steps[i] for r in runs) for i in range(n_steps)]
        return cls(
            text_encoder=med(r.text_encoder for r in runs),
            denoiser=med(r.denoiser for r in runs),
            denoiser_per_step=med(s for r in runs for s in r.denoiser_steps) if n_steps else 0.0,
            vae_decode=med(r.vae_decode for r in runs),
            other=med(r.other for r in runs),
            steps=steps,
        )

    def seconds(self) -> dict[str, float]:
        """Median seconds of the compute stages, as ``flops_report(stage_seconds=...)`` takes them."""
        return {"text_encoder": self.text_encoder, "denoiser": self.denoiser, "vae_decode": self.vae_decode}

    def shares(self) -> dict[str, float]:
        total = self.text_encoder + self.denoiser + self.vae_decode + self.other
        parts = {"text_encoder": self.text_encoder, "denoiser": self.denoiser, "vae_decode": self.vae_decode}
        parts["other"] = self.other
        return {k: v / total for k, v in parts.items()} if total > 0 else parts


@dataclass
class CaseResult(Record):
    """Measurements of one case; ``error`` is set (and the numbers None) when it failed."""

    case: Case
    latency: Latency | None = None
    first_call_s: float | None = None
    images_per_s: float | None = None
    peak_rss_mb: float | None = None
    rss_before_mb: float | None = None  # resident after the warm-up, before the measured calls (weights included)
    peak_cuda_allocated_mb: float | None = None
    peak_cuda_reserved_mb: float | None = None
    cpu_percent: float | None = None
    stages: StageSummary | None = None
    energy: Energy | None = None  # of the measured calls (lab.power): NVML on CUDA, RAPL on a CPU, or why not
    latencies: list[float] = field(default_factory=list)
    runs: list[StageTimes] = field(default_factory=list)
    image: str | None = None
    error: str | None = None
    host: HostLoad | None = None  # what else the host did during the measured calls (lab.host)

    def row(self) -> dict[str, Any]:
        lat, st = self.latency, self.stages
        return {
            "case": self.case.name,
            "steps": self.case.steps,
            "median_s": lat.median if lat else None,
            "iqr_s": lat.iqr if lat else None,
            "std_s": lat.std if lat else None,
            "n": lat.n if lat else 0,
            "first_call_s": self.first_call_s,
            "images_per_s": self.images_per_s,
            "text_encoder_s": st.text_encoder if st else None,
            "denoiser_s": st.denoiser if st else None,
            "denoiser_step_ms": st.denoiser_per_step * 1e3 if st else None,
            "vae_decode_s": st.vae_decode if st else None,
            "other_s": st.other if st else None,
            "peak_rss_mb": self.peak_rss_mb,
            "peak_cuda_alloc_mb": self.peak_cuda_allocated_mb,
            "cpu_percent": self.cpu_percent,
            "host": self.host.label() if self.host else None,
            "energy_j_per_image": self.energy.joules_per_image if self.energy else None,
            "mean_watts": self.energy.mean_watts if self.energy else None,
            "error": self.error,
        }


@dataclass
class BenchmarkResult(Record):
    """A benchmark of one pipeline over cases, with the environment it ran in."""

    model: str
    pipeline: str
    dtype: str
    device: str
    scheduler: str
    warmup: int
    repeats: int
    cases: list[CaseResult]
    env: Environment
    created: str
    weight_bytes: int | None = None
    resources: list[ResourceSample] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C or SIGTERM stopped it: ``cases`` are those that finished

    def to_frame(self, full: bool = True):
        """One row per case (pandas DataFrame); ``full=False`` keeps the narrow set ``SUMMARY_COLUMNS``."""
        import pandas as pd

        frame = pd.DataFrame([c.row() for c in self.cases]).set_index("case")
        if not full:
            frame = frame[[c for c in SUMMARY_COLUMNS if c in frame]].dropna(axis=1, how="all")
        return frame

    def to_markdown(self, digits: int = 3, full: bool = False) -> str:
        """The table under a one-line header of what ran where; narrow by default (``full=True``: every column)."""
        frame = self.to_frame(full=full).dropna(axis=1, how="all")
        header = (
            f"**{self.model}** ({self.pipeline}, {self.dtype}, {self.device}, {self.scheduler}) — "
            f"warm-up {self.warmup}, repeats {self.repeats}; {self.env.device_name}, "
            f"torch {self.env.packages.get('torch')}, {self.env.torch_threads} threads\n\n"
        )
        table = header + frame.round(digits).to_markdown()
        if busy := self.busy:
            table += (f"\n\nMeasured under contention ({busy}): these times describe the host as much as the "
                      "pipeline; rerun on a quiet host before comparing them.")
        return table

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    @property
    def busy(self) -> str:
        """The contention the cases were measured under ("" when the host was quiet or nothing was recorded)."""
        load = HostLoad.combine([c.host for c in self.cases if c.host and c.host.busy])
        return "; ".join(load.reasons) if load else ""

    @property
    def failed(self) -> list[CaseResult]:
        return [c for c in self.cases if c.error]


class BenchmarkInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM raised as it) during ``benchmark``: ``result`` holds the cases that finished."""

    def __init__(self, result: "BenchmarkResult", signal: KeyboardInterrupt):
        super().__init__(str(signal))
        self.result, self.signal = result, signal


def _run_case(pipe, timer: StageTimer, case: Case, device: str, warmup: int, repeats: int, tick,
              meter: EnergyMeter) -> tuple:
    import torch

    kwargs = case.pipeline_kwargs()
    proc = psutil.Process()
    first_call, runs, output = None, [], None
    rss_before = None
    gpu = _gpu_index(device)
    watches = []
    meter.reset()
    for i in range(warmup + repeats):
        flush(device)
        if i == warmup:  # after the warm-up: its lasting growth (arenas, caches) varies by MBs run to run
            rss_before = proc.memory_info().rss
        watch = HostWatch(gpu)
        generator = torch.Generator("cpu").manual_seed(case.seed)
        cpu_before = proc.cpu_times()
        if i >= warmup:
            meter.start()
        with watch:
            output, times = timer.measure(pipe, generator=generator, **kwargs)
        if i >= warmup:
            meter.stop(len(output.images))
        cpu_after = proc.cpu_times()
        if i == 0:
            first_call = times.total
        if i >= warmup:
            busy = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
            runs.append((times, peak_rss_bytes(), cuda_peaks(device), 100.0 * busy / times.total))
            watches.append(watch.load)
        tick()
    return first_call, runs, output, rss_before, meter.result(), HostLoad.combine(watches)


def _gpu_index(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    return int(device.split(":")[1]) if ":" in device else 0


def _case_result(case: Case, first: float, runs: list, output, rss_before: int, energy: Energy, host,
                 image_dir) -> CaseResult:
    times = [r[0] for r in runs]
    latency = Latency.from_values([t.total for t in times])
    image_path = None
    if image_dir is not None:
        image_path = str(inside(image_dir, f"{file_stem(case.name)}.png"))  # a case name never escapes image_dir
        save_image(output.images[0], image_path)  # atomic: a full disk leaves no 0-byte PNG
    allocated = [r[2][0] for r in runs if r[2][0] is not None]
    reserved = [r[2][1] for r in runs if r[2][1] is not None]
    return CaseResult(
        case=case,
        latency=latency,
        first_call_s=first,
        images_per_s=len(output.images) / latency.median,
        peak_rss_mb=max(r[1] for r in runs) / MB,
        rss_before_mb=rss_before / MB,
        peak_cuda_allocated_mb=max(allocated) / MB if allocated else None,
        peak_cuda_reserved_mb=max(reserved) / MB if reserved else None,
        cpu_percent=statistics.fmean(r[3] for r in runs),
        stages=StageSummary.from_runs(times),
        energy=energy,
        latencies=[t.total for t in times],
        runs=times,
        image=image_path,
        host=host,
    )


def benchmark(
    pipe,
    cases: Sequence[Case] | Case,
    *,
    warmup: int = 1,
    repeats: int = 5,
    image_dir: str | os.PathLike | None = None,
    progress: bool = True,
    monitor: ResourceMonitor | None = None,
) -> BenchmarkResult:
    """Time ``pipe`` on each case: ``warmup`` untimed calls, then ``repeats`` measured ones.

    A case that raises is recorded with its error and the others still run.

    Args:
        image_dir: where to save each case's last image as ``<case>.png``; None saves nothing.
        monitor: a ``ResourceMonitor`` sampling during the whole benchmark (kept in ``resources``).
    """
    from tqdm.auto import tqdm

    from .models import weight_bytes

    cases = [cases] if isinstance(cases, Case) else list(cases)
    if not cases:
        raise LabError("benchmark needs at least one case")
    positive_int("repeats", repeats)
    positive_int("warmup", warmup, minimum=0)
    if image_dir is not None:
        image_dir = writable_dir(image_dir)
    device = str(pipe.device)
    env = Environment.capture(device)
    meter = EnergyMeter(device)
    results = []
    bar = tqdm(total=len(cases) * (warmup + repeats), desc="benchmark", unit="call", disable=not progress)
    if monitor is not None:
        monitor.start()
    stopped = None
    try:
        with StageTimer(pipe, device=device) as timer:
            for case in cases:
                bar.set_postfix_str(case.name)
                try:
                    first, runs, output, rss_before, energy, host = _run_case(pipe, timer, case, device, warmup,
                                                                              repeats, bar.update, meter)
                except Exception as err:  # one failing case never loses the others
                    results.append(CaseResult(case=case, error=f"{type(err).__name__}: {err}"))
                    continue
                results.append(_case_result(case, first, runs, output, rss_before, energy, host, image_dir))
    except KeyboardInterrupt as err:  # the finished cases are handed back with the interrupt
        stopped = err
    finally:
        bar.close()
        if monitor is not None:
            monitor.stop()
    result = BenchmarkResult(
        model=getattr(pipe, "lab_model", type(pipe).__name__),
        pipeline=type(pipe).__name__,
        dtype=dtype_name(denoiser(pipe).dtype),
        device=device,
        scheduler=type(pipe.scheduler).__name__,
        warmup=warmup,
        repeats=repeats,
        cases=results,
        env=env,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        weight_bytes=sum(weight_bytes(pipe).values()),
        resources=list(monitor.samples) if monitor is not None else [],
        interrupted=stopped is not None,
    )
    if stopped is not None:
        raise BenchmarkInterrupted(result, stopped)
    return result


def timed_loop(pipe, case: Case, repeats: int) -> list[float]:
    """A bare ``for`` loop around the pipeline: the reference for harness overhead."""
    import torch

    from .env import synchronize

    device = str(pipe.device)
    out = []
    for _ in range(repeats):
        generator = torch.Generator("cpu").manual_seed(case.seed)
        synchronize(device)
        start = time.perf_counter()
        pipe(generator=generator, **case.pipeline_kwargs())
        synchronize(device)
        out.append(time.perf_counter() - start)
    return out
