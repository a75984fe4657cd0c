"""``profile()``: a torch.profiler trace of one pipeline call, with named stage ranges and step markers.

The trace holds the ranges ``lab:text_encoder``, ``lab:denoiser_step_{i}`` and ``lab:vae_decode``, and the
step markers torch.profiler's own tools read (``ProfilerStep#N``, from ``prof.step()``): step 0 is prompt
encoding and set-up, steps 1..k the denoising steps, the last one the VAE decode. TensorBoard's plugin and
HTA therefore see one step per denoising step. The profiled call runs ``record_steps`` denoising steps of
the case (same shapes, same work per step), so the trace size is bounded whatever the case's step count,
and the whole call is recorded: no paused stretch that trace tools would read as idle time.

On CUDA the op table (``ops()``) holds framework ops with their device time, and ``kernels()`` the GPU
kernels under short readable names; runtime calls (``cudaLaunchKernel``...) are kept apart.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

from ._checks import LabError, positive_int, writable_dir
from .cases import Case
from .env import Environment
from .denoiser import STEP_PREFIX, canonical_stage
from .paths import file_stem, inside
from .results import Record, atomic_write_text

RANGE_PREFIX = "lab:"
KINDS = ("op", "kernel", "runtime", "profiler")
# Host-side calls that block until the device has finished: what a "synchronisation" is in a trace.
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
_PROFILER_INTERNALS = ("Activity Buffer Request", "Buffer Flush", "ProfilerStep")


def op_kind(name: str, self_cpu_us: float, self_device_us: float, on_cuda: bool) -> str:
    """``op`` (framework op), ``kernel`` (device activity), ``runtime`` (CUDA API call) or ``profiler``."""
    if name.startswith(_PROFILER_INTERNALS) or name.startswith("[") or name.startswith(RANGE_PREFIX):
        return "profiler"
    if re.match(r"^cu(da)?[A-Z]", name):
        return "runtime"
    if on_cuda and self_cpu_us == 0 and self_device_us > 0 and not name.startswith("aten::"):
        return "kernel"
    return "op"


def short_kernel_name(name: str, width: int = 60) -> str:
    """A readable kernel name: no ``void``, namespaces, template arguments or parameter list."""
    text = name.removeprefix("void ").replace("(anonymous namespace)::", "")
    while True:  # innermost template arguments first, until none are left
        stripped = re.sub(r"<[^<>]*>", "", text)
        if stripped == text:
            break
        text = stripped
    text = text.split("(", 1)[0].strip()
    text = text.rsplit("::", 1)[-1] or name
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class StageSpan(Record):
    """One ``lab:<stage>`` range of the trace."""

    stage: str
    start_us: float
    duration_us: float


@dataclass
class OpRecord(Record):
    """One op (or kernel) name within one stage, aggregated over its calls (times in microseconds)."""

    stage: str
    name: str
    calls: int
    self_cpu_us: float
    cpu_total_us: float
    self_device_us: float
    device_total_us: float
    input_shapes: str = ""
    kind: str = ""  # op | kernel | runtime | profiler; inferred from the name for traces recorded before it


def _stage_group(stage: str) -> str:
    return "denoiser" if stage.startswith(STEP_PREFIX) else stage


def _split_device_spans(spans: list[StageSpan]) -> tuple[list[StageSpan], list[StageSpan]]:
    """Old CUDA profiles hold each range twice (host range, then its GPU annotation): split them apart."""
    host, device, open_until = [], [], {}
    for span in sorted(spans, key=lambda s: s.start_us):
        if span.stage in open_until and span.start_us < open_until[span.stage]:
            device.append(span)
            continue
        host.append(span)
        open_until[span.stage] = span.start_us + span.duration_us
    return host, device


@dataclass
class ProfileResult(Record):
    """What ``profile()`` measured and where it wrote the trace files."""

    model: str
    case: Case
    device: str
    record_steps: int  # denoising steps the profiled call was asked to run
    denoising_steps: int  # the case's own
    wall_s: float
    spans: list[StageSpan]
    op_records: list[OpRecord]
    trace_path: str
    tensorboard_dir: str
    trace_bytes: int
    env: Environment
    memory_timeline: str | None = None
    memory_snapshot: str | None = None
    notes: list[str] = field(default_factory=list)
    device_spans: list[StageSpan] = field(default_factory=list)  # the ranges as the GPU ran them (CUDA)
    memory_snapshot_bytes: int | None = None
    timer_syncs: bool = True  # the stage timer synchronised at boundaries (profiles recorded before lab 0.2)
    profiler_messages: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        on_cuda = self.device.startswith("cuda")
        for item in (*self.spans, *self.device_spans, *self.op_records):  # profiles saved as unet_step_i
            item.stage = canonical_stage(item.stage)
        if on_cuda and not self.device_spans:
            self.spans, self.device_spans = _split_device_spans(self.spans)
        for r in self.op_records:
            if not r.kind:
                r.kind = op_kind(r.name, r.self_cpu_us, r.self_device_us, on_cuda)

    @property
    def on_device(self) -> bool:
        """Whether the trace holds device time (a CUDA profile): op tables then rank by it."""
        return any(r.self_device_us > 0 for r in self.op_records)

    @property
    def has_kernels(self) -> bool:
        return any(r.kind == "kernel" for r in self.op_records)

    def stages(self):
        """Time per stage from the trace ranges (DataFrame; ``denoiser_step_*`` kept apart)."""
        import pandas as pd

        rows = defaultdict(float)
        for span in self.spans:
            rows[span.stage] += span.duration_us
        frame = pd.DataFrame({"stage": list(rows), "ms": [v / 1e3 for v in rows.values()]}).set_index("stage")
        frame["share"] = frame["ms"] / frame["ms"].sum()
        return frame

    def _records(self, kind: str, stage: str | None) -> list[OpRecord]:
        return [r for r in self.op_records
                if r.kind == kind and (stage is None or stage in (r.stage, _stage_group(r.stage)))]

    def _span_us(self, stage: str | None) -> float:
        return sum(s.duration_us for s in self.spans if stage is None or stage in (s.stage, _stage_group(s.stage)))

    def ops(self, by: str = "self", stage: str | None = None, top: int | None = 20, full: bool = False):
        """Op table (framework ops only), sorted by self or total time: device time on CUDA, CPU time otherwise.

        Args:
            stage: a stage (``text_encoder``, ``denoiser_step_0``, ``vae_decode``, ``other``), or
                ``denoiser`` for all recorded denoising steps; None for the whole trace.
            full: every column in microseconds with input shapes; by default a narrow table in ms.
        """
        import pandas as pd

        from ._checks import choose

        choose("sort key", by, ("self", "total"))
        frame = pd.DataFrame([r.to_dict() for r in self._records("op", stage)])
        if frame.empty:
            return frame
        shapes = frame.groupby("name")["input_shapes"].agg(lambda s: max(s, key=len))
        frame = frame.groupby("name").agg(
            calls=("calls", "sum"), self_cpu_us=("self_cpu_us", "sum"), cpu_total_us=("cpu_total_us", "sum"),
            self_device_us=("self_device_us", "sum"), device_total_us=("device_total_us", "sum"),
        )
        frame["input_shapes"] = shapes.map(lambda s: " ".join(str(s).split()))
        span_us = self._span_us(stage)
        self_col, total_col = (("self_device_us", "device_total_us") if self.on_device
                               else ("self_cpu_us", "cpu_total_us"))
        frame["stage_share"] = frame[self_col] / span_us if span_us else float("nan")
        frame = frame.sort_values(self_col if by == "self" else total_col, ascending=False)
        frame = frame.head(top) if top else frame
        if full:
            return frame
        where = "device" if self.on_device else "cpu"
        narrow = pd.DataFrame({"calls": frame["calls"], f"self_{where}_ms": frame[self_col] / 1e3,
                               f"total_{where}_ms": frame[total_col] / 1e3,
                               "share_%": 100 * frame["stage_share"]}, index=frame.index)
        return narrow.round(3)

    def kernels(self, stage: str | None = None, top: int | None = 20, full: bool = False):
        """GPU kernels by device time under short names (``full``: with the original names); empty on CPU."""
        import pandas as pd

        records = self._records("kernel", stage)
        if not records:
            return pd.DataFrame(columns=["calls", "device_ms", "share_%", "variants"])
        frame = pd.DataFrame([{"kernel": short_kernel_name(r.name), "name": r.name, "calls": r.calls,
                               "device_us": r.self_device_us} for r in records])
        span_us = self._span_us(stage)
        out = frame.groupby("kernel").agg(calls=("calls", "sum"), device_us=("device_us", "sum"),
                                          variants=("name", "nunique"))
        out["device_ms"] = out.pop("device_us") / 1e3
        out["share_%"] = 100 * out["device_ms"] * 1e3 / span_us if span_us else float("nan")
        if full:
            out["names"] = frame.groupby("kernel")["name"].agg(lambda s: sorted(set(s)))
        out = out.sort_values("device_ms", ascending=False)
        out = out.head(top) if top else out
        return out[["calls", "device_ms", "share_%", "variants"] + (["names"] if full else [])].round(3)

    def device_busy(self) -> dict[str, float]:
        """Per recorded stage: kernel time ÷ host wall time of the stage (CUDA; < 1 means the GPU idled)."""
        busy: dict[str, float] = defaultdict(float)
        for r in self.op_records:
            if r.kind == "kernel":
                busy[r.stage] += r.self_device_us
        wall: dict[str, float] = defaultdict(float)
        for span in self.spans:
            wall[span.stage] += span.duration_us
        return {stage: busy.get(stage, 0.0) / us for stage, us in wall.items() if us > 0}

    def syncs(self) -> dict[str, int]:
        """Per stage: host-device synchronisations the pipeline made (the stage timer's own excluded)."""
        ignored = ("cudaDeviceSynchronize",) if self.timer_syncs else ()  # torch.cuda.synchronize: the timer's
        out: dict[str, int] = defaultdict(int)
        for r in self.op_records:
            if r.kind == "runtime" and r.name in SYNC_CALLS and r.name not in ignored:
                out[r.stage] += r.calls
        return dict(out)

    def export_chrome_trace(self, path: str | os.PathLike) -> Path:
        """Write the trace for Perfetto / chrome://tracing, gzipped when ``path`` ends in ``.gz``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if str(path).endswith(".gz"):
            with open(self.trace_path, "rb") as src, gzip.open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            shutil.copyfile(self.trace_path, path)
        return path

    @property
    def denoiser_steps(self) -> int:
        """Denoiser evaluations the trace holds (PNDM adds one to the steps asked for)."""
        return len({s.stage for s in self.spans if s.stage.startswith(STEP_PREFIX)}) or self.record_steps

    @property
    def trace_bytes_per_step(self) -> float:
        return self.trace_bytes / self.denoiser_steps

    def _repr_markdown_(self) -> str:
        return (f"**profile of {self.model}** ({self.case.name}, {self.record_steps} of {self.denoising_steps} "
                f"steps recorded, trace {self.trace_bytes / 1e6:.2f} MB: `{self.trace_path}`)\n\n"
                + self.stages().round(3).to_markdown())


def _op_records(events, spans: list[StageSpan], device_spans: list[StageSpan], record_shapes: bool,
                on_cuda: bool) -> list[OpRecord]:
    from torch.autograd import DeviceType

    host = sorted(spans, key=lambda s: s.start_us)
    device = sorted(device_spans, key=lambda s: s.start_us) or host
    acc: dict[tuple[str, str], dict] = {}
    for e in events:
        if e.name.startswith(RANGE_PREFIX):
            continue
        on_device = e.device_type != DeviceType.CPU
        start = e.time_range.start
        # kernels run after their launch: place them by the ranges as the GPU ran them
        stage = next((s.stage for s in (device if on_device else host)
                      if s.start_us <= start < s.start_us + s.duration_us), "other")
        self_dev, total_dev = getattr(e, "self_device_time_total", 0.0), getattr(e, "device_time_total", 0.0)
        kind = "kernel" if on_device else op_kind(e.name, e.self_cpu_time_total, 0.0, on_cuda)
        rec = acc.setdefault((stage, e.name), {"calls": 0, "self_cpu_us": 0.0, "cpu_total_us": 0.0,
                                               "self_device_us": 0.0, "device_total_us": 0.0, "input_shapes": "",
                                               "kind": kind})
        rec["calls"] += 1
        rec["self_cpu_us"] += 0.0 if on_device else e.self_cpu_time_total
        rec["cpu_total_us"] += 0.0 if on_device else e.cpu_time_total
        rec["self_device_us"] += self_dev
        rec["device_total_us"] += total_dev
        if record_shapes and not rec["input_shapes"] and e.input_shapes:
            rec["input_shapes"] = str(e.input_shapes)
    return [OpRecord(stage=stage, name=name, **rec) for (stage, name), rec in acc.items()]


def profile(
    pipe,
    case: Case,
    *,
    record_steps: int = 2,
    out_dir: str | os.PathLike = "runs/profile",
    record_shapes: bool = True,
    profile_memory: bool = True,
    with_stack: bool = False,
    warmup: int = 1,
    run_name: str | None = None,
    monitor=None,
    memory_snapshot: bool = False,
    snapshot_max_entries: int = 10_000,
) -> ProfileResult:
    """Profile one call of ``case`` (run for ``record_steps`` denoising steps) after ``warmup`` calls.

    Args:
        record_steps: denoising steps of the profiled call (1 .. ``case.steps``): every step costs the same,
            so a few steps show the loop while bounding the trace.
        out_dir: gets ``tensorboard/<run_name>/*.pt.trace.json`` (open with ``tensorboard
            --logdir out_dir/tensorboard``), the memory timeline (with ``with_stack``) and, when asked, a
            CUDA memory snapshot.
        monitor: a ``ResourceMonitor`` to run during the profiled call.
        memory_snapshot: on CUDA, also write ``memory_snapshot.json`` (allocator history with Python
            stacks, at most ``snapshot_max_entries`` events; its size is reported). Off by default: with
            C++ stacks and 100 000 entries it reached 235 MB for 4 steps of sd15 at 512².
    """
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerAction, ProfilerActivity, tensorboard_trace_handler

    from ._quiet import captured_stderr
    from .timing import StageTimer

    positive_int("record_steps", record_steps)
    positive_int("warmup", warmup, minimum=0)
    positive_int("snapshot_max_entries", snapshot_max_entries)
    if record_steps > case.steps:
        raise LabError(f"record_steps={record_steps} is more than the case's {case.steps} denoising steps; "
                       f"choose 1..{case.steps}")
    out = writable_dir(out_dir)
    device = str(pipe.device)
    on_cuda = device.startswith("cuda")
    model = getattr(pipe, "lab_model", type(pipe).__name__)
    run_name = file_stem(run_name or f"{Path(model).name}-{case.name}")  # a prompt never becomes a path
    kwargs = case.with_overrides(steps=record_steps).pipeline_kwargs()
    for _ in range(warmup):
        pipe(generator=torch.Generator("cpu").manual_seed(case.seed), **kwargs)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    notes: list[str] = []
    messages: list[str] = []
    snapshot_path = snapshot_bytes = None
    tb_dir = out / "tensorboard"
    run_dir = inside(tb_dir, run_name)
    for old in run_dir.glob("*.pt.trace.json"):  # one trace per run folder, so TensorBoard shows this call only;
        old.unlink()  # only the traces lab wrote go: nothing else in the folder is touched
    with captured_stderr(messages):
        if on_cuda and memory_snapshot:
            torch.cuda.memory._record_memory_history(max_entries=snapshot_max_entries, stacks="python")
        # A schedule that always records: torch.profiler writes ProfilerStep#N markers only when given one.
        prof = torch.profiler.profile(activities=activities, record_shapes=record_shapes,
                                      profile_memory=profile_memory, with_stack=with_stack,
                                      schedule=lambda step: ProfilerAction.RECORD)

        def listener(event: str, stage: str) -> None:
            # ProfilerStep#0 is prompt encoding; each denoising step and the VAE decode open the next one
            if event == "begin" and (stage.startswith(STEP_PREFIX) or stage == "vae_decode"):
                prof.step()

        with StageTimer(pipe, device=device, ranges=True, listener=listener, sync=False) as timer:
            if monitor is not None:
                monitor.start()
            try:
                with prof:
                    start = time.perf_counter()
                    _, times = timer.measure(pipe, generator=torch.Generator("cpu").manual_seed(case.seed), **kwargs)
                    wall = time.perf_counter() - start
            finally:
                if monitor is not None:
                    monitor.stop()
        if on_cuda and memory_snapshot:
            snapshot_path = out / "memory_snapshot.json"
            atomic_write_text(snapshot_path, json.dumps(torch.cuda.memory._snapshot()))
            torch.cuda.memory._record_memory_history(enabled=None)
            snapshot_bytes = snapshot_path.stat().st_size
            notes.append(f"memory_snapshot.json: torch.cuda.memory._snapshot() as JSON (no pickle), at most "
                         f"{snapshot_max_entries} allocator events with Python stacks, "
                         f"{snapshot_bytes / 1e6:.1f} MB")
        tensorboard_trace_handler(str(run_dir), worker_name=run_name)(prof)
        events = prof.events()
        timeline_path = None
        if profile_memory and with_stack and record_shapes:
            timeline_path = out / "memory_timeline.html"
            prof.export_memory_timeline(str(timeline_path), device="cuda:0" if on_cuda else "cpu")
    trace_path = next(run_dir.glob("*.pt.trace.json"), None)
    if trace_path is None:
        raise LabError(f"torch.profiler wrote no trace into {str(run_dir)!r}")
    if profile_memory and not timeline_path:
        notes.append("no memory timeline: torch's export_memory_timeline needs with_stack=True and record_shapes=True")
    if messages:
        notes.append(f"{len(messages)} profiler message(s) kept off the screen: see profiler_messages")

    def span(e) -> StageSpan:
        return StageSpan(e.name[len(RANGE_PREFIX):], e.time_range.start, e.time_range.end - e.time_range.start)

    ranges = [e for e in events if e.name.startswith(RANGE_PREFIX)]
    spans = [span(e) for e in ranges if e.device_type == DeviceType.CPU]
    device_spans = [span(e) for e in ranges if e.device_type != DeviceType.CPU]
    return ProfileResult(
        model=model, case=case, device=device, record_steps=record_steps, denoising_steps=case.steps,
        wall_s=wall, spans=spans, op_records=_op_records(events, spans, device_spans, record_shapes, on_cuda),
        trace_path=str(trace_path), tensorboard_dir=str(tb_dir), trace_bytes=trace_path.stat().st_size,
        env=Environment.capture(device), memory_timeline=str(timeline_path) if timeline_path else None,
        memory_snapshot=str(snapshot_path) if snapshot_path else None, notes=notes, device_spans=device_spans,
        memory_snapshot_bytes=snapshot_bytes, timer_syncs=False, profiler_messages=messages,
    )


@dataclass
class ProfileDiff:
    """Per-op and per-stage time deltas between two profiles (``after`` − ``before``), in ms.

    Denoiser figures are per recorded denoising step, so profiles recorded with different
    ``record_steps`` (or schedulers) compare fairly.
    """

    before: str
    after: str
    ops: Any  # DataFrame indexed by op name
    stages: Any  # DataFrame indexed by stage group


def _stage_ms(prof: ProfileResult) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for span in prof.spans:
        out[_stage_group(span.stage)] += span.duration_us / 1e3
    if "denoiser" in out:
        out["denoiser"] /= prof.denoiser_steps
    return dict(out)


def _op_ms(prof: ProfileResult) -> dict[str, float]:
    on_device = prof.on_device
    out: dict[str, float] = defaultdict(float)
    for r in prof.op_records:
        if r.kind != "op":
            continue
        us = r.self_device_us if on_device else r.self_cpu_us
        out[r.name] += us / 1e3 / (prof.denoiser_steps if r.stage.startswith(STEP_PREFIX) else 1)
    return dict(out)


def _delta_frame(before: dict[str, float], after: dict[str, float], key: str):
    import pandas as pd

    names = sorted(set(before) | set(after))
    frame = pd.DataFrame({key: names, "before_ms": [before.get(n, 0.0) for n in names],
                          "after_ms": [after.get(n, 0.0) for n in names]}).set_index(key)
    frame["delta_ms"] = frame["after_ms"] - frame["before_ms"]
    frame["ratio"] = frame["after_ms"] / frame["before_ms"].where(frame["before_ms"] > 0)
    return frame.reindex(frame["delta_ms"].abs().sort_values(ascending=False).index)


def diff_profiles(before: ProfileResult, after: ProfileResult, *, before_name: str = "before",
                  after_name: str = "after") -> ProfileDiff:
    """Which ops and stages got faster or slower, and by how much (self time per call of the pipeline)."""
    return ProfileDiff(
        before=before_name,
        after=after_name,
        ops=_delta_frame(_op_ms(before), _op_ms(after), "op"),
        stages=_delta_frame(_stage_ms(before), _stage_ms(after), "stage"),
    )
