"""``profile()``: a torch.profiler trace of one pipeline call, with named stage ranges.

The trace holds the ranges ``lab:text_encoder``, ``lab:unet_step_{i}`` and ``lab:vae_decode``.
Only the first ``record_steps`` denoising steps are recorded (collection is paused for the rest
and resumed for the VAE decode), which bounds the trace size whatever the step count.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

from ._checks import LabError, positive_int, writable_dir
from .cases import Case
from .env import Environment
from .results import Record

RANGE_PREFIX = "lab:"


@dataclass
class StageSpan(Record):
    """One ``lab:<stage>`` range of the trace."""

    stage: str
    start_us: float
    duration_us: float


@dataclass
class OpRecord(Record):
    """One op name within one stage, aggregated over its calls (times in microseconds)."""

    stage: str
    name: str
    calls: int
    self_cpu_us: float
    cpu_total_us: float
    self_device_us: float
    device_total_us: float
    input_shapes: str = ""


def _stage_group(stage: str) -> str:
    return "unet" if stage.startswith("unet_step_") else stage


@dataclass
class ProfileResult(Record):
    """What ``profile()`` measured and where it wrote the trace files."""

    model: str
    case: Case
    device: str
    record_steps: int
    denoising_steps: int
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

    def stages(self):
        """Time per stage from the trace ranges (DataFrame; ``unet_step_*`` kept apart)."""
        import pandas as pd

        rows = defaultdict(float)
        for span in self.spans:
            rows[span.stage] += span.duration_us
        frame = pd.DataFrame({"stage": list(rows), "ms": [v / 1e3 for v in rows.values()]}).set_index("stage")
        frame["share"] = frame["ms"] / frame["ms"].sum()
        return frame

    def ops(self, by: str = "self", stage: str | None = None, top: int | None = 20):
        """Op table sorted by self or total CPU time (device time on CUDA).

        Args:
            stage: a stage (``text_encoder``, ``unet_step_0``, ``vae_decode``, ``other``), or
                ``unet`` for all recorded denoising steps; None for the whole trace.
        """
        import pandas as pd

        from ._checks import choose

        choose("sort key", by, ("self", "total"))
        records = [r for r in self.op_records if stage is None or stage in (r.stage, _stage_group(r.stage))]
        frame = pd.DataFrame([r.to_dict() for r in records])
        if frame.empty:
            return frame
        shapes = frame.groupby("name")["input_shapes"].agg(lambda s: max(s, key=len))
        frame = frame.groupby("name").agg(
            calls=("calls", "sum"), self_cpu_us=("self_cpu_us", "sum"), cpu_total_us=("cpu_total_us", "sum"),
            self_device_us=("self_device_us", "sum"), device_total_us=("device_total_us", "sum"),
        )
        frame["input_shapes"] = shapes
        span_us = sum(s.duration_us for s in self.spans if stage is None or stage in (s.stage, _stage_group(s.stage)))
        on_device = frame["self_device_us"].sum() > 0
        self_col = "self_device_us" if on_device else "self_cpu_us"
        total_col = "device_total_us" if on_device else "cpu_total_us"
        frame["stage_share"] = frame[self_col] / span_us if span_us else float("nan")
        frame = frame.sort_values(self_col if by == "self" else total_col, ascending=False)
        return frame.head(top) if top else frame

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
    def trace_bytes_per_step(self) -> float:
        return self.trace_bytes / self.record_steps

    def _repr_markdown_(self) -> str:
        return (f"**profile of {self.model}** ({self.case.name}, {self.record_steps} of {self.denoising_steps} "
                f"steps recorded, trace {self.trace_bytes / 1e6:.2f} MB: `{self.trace_path}`)\n\n"
                + self.stages().round(3).to_markdown())


def _op_records(events, spans: list[StageSpan], record_shapes: bool) -> list[OpRecord]:
    ordered = sorted(spans, key=lambda s: s.start_us)
    acc: dict[tuple[str, str], dict] = {}
    for e in events:
        if e.name.startswith(RANGE_PREFIX) or e.name.startswith(("ProfilerStep", "[")):
            continue
        start = e.time_range.start
        stage = next((s.stage for s in ordered if s.start_us <= start < s.start_us + s.duration_us), "other")
        rec = acc.setdefault((stage, e.name), {"calls": 0, "self_cpu_us": 0.0, "cpu_total_us": 0.0,
                                               "self_device_us": 0.0, "device_total_us": 0.0, "input_shapes": ""})
        rec["calls"] += 1
        rec["self_cpu_us"] += e.self_cpu_time_total
        rec["cpu_total_us"] += e.cpu_time_total
        rec["self_device_us"] += getattr(e, "self_device_time_total", 0.0)
        rec["device_total_us"] += getattr(e, "device_time_total", 0.0)
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
) -> ProfileResult:
    """Profile one call of ``case`` after ``warmup`` calls; write the trace and a TensorBoard run.

    Args:
        record_steps: denoising steps kept in the trace (1 .. ``case.steps``).
        out_dir: gets ``tensorboard/<run_name>/*.pt.trace.json`` (open with ``tensorboard
            --logdir out_dir/tensorboard``), the memory timeline (with ``with_stack``) and, on CUDA,
            a memory snapshot.
        monitor: a ``ResourceMonitor`` to run during the profiled call.
    """
    import torch
    from torch.profiler import ProfilerActivity, tensorboard_trace_handler

    from .timing import StageTimer

    positive_int("record_steps", record_steps)
    positive_int("warmup", warmup, minimum=0)
    if record_steps > case.steps:
        raise LabError(f"record_steps={record_steps} is more than the case's {case.steps} denoising steps; "
                       f"choose 1..{case.steps}")
    out = writable_dir(out_dir)
    device = str(pipe.device)
    model = getattr(pipe, "lab_model", type(pipe).__name__)
    run_name = run_name or f"{Path(model).name}-{case.name}"
    kwargs = case.pipeline_kwargs()
    for _ in range(warmup):
        pipe(generator=torch.Generator("cpu").manual_seed(case.seed), **kwargs)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    notes: list[str] = []
    snapshot_path = None
    if device.startswith("cuda"):
        torch.cuda.memory._record_memory_history(max_entries=100_000)

    prof = torch.profiler.profile(activities=activities, record_shapes=record_shapes,
                                  profile_memory=profile_memory, with_stack=with_stack)

    def listener(event: str, stage: str) -> None:
        # pause after the last recorded step, resume for the VAE decode
        if event == "end" and stage == f"unet_step_{record_steps - 1}":
            prof.toggle_collection_dynamic(False, activities)
        elif event == "begin" and stage == "vae_decode":
            prof.toggle_collection_dynamic(True, activities)

    with StageTimer(pipe, device=device, ranges=True, listener=listener) as timer:
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

    if device.startswith("cuda"):
        snapshot_path = out / "memory_snapshot.json"
        snapshot_path.write_text(json.dumps(torch.cuda.memory._snapshot()))
        torch.cuda.memory._record_memory_history(enabled=None)
        notes.append("memory_snapshot.json is torch.cuda.memory._snapshot() as JSON (lab writes no pickle).")

    tb_dir = out / "tensorboard"
    run_dir = tb_dir / run_name
    if run_dir.exists():
        shutil.rmtree(run_dir)  # one trace per run folder, so TensorBoard shows this call only
    tensorboard_trace_handler(str(run_dir), worker_name=run_name)(prof)
    trace_path = next(run_dir.glob("*.pt.trace.json"))

    events = prof.events()
    spans = [StageSpan(e.name[len(RANGE_PREFIX):], e.time_range.start, e.time_range.end - e.time_range.start)
             for e in events if e.name.startswith(RANGE_PREFIX)]
    timeline_path = None
    if profile_memory and with_stack and record_shapes:
        timeline_path = out / "memory_timeline.html"
        prof.export_memory_timeline(str(timeline_path), device="cuda:0" if device.startswith("cuda") else "cpu")
    elif profile_memory:
        notes.append("no memory timeline: torch's export_memory_timeline needs with_stack=True and record_shapes=True")

    return ProfileResult(
        model=model, case=case, device=device, record_steps=record_steps, denoising_steps=len(times.unet_steps),
        wall_s=wall, spans=spans, op_records=_op_records(events, spans, record_shapes),
        trace_path=str(trace_path), tensorboard_dir=str(tb_dir), trace_bytes=trace_path.stat().st_size,
        env=Environment.capture(device), memory_timeline=str(timeline_path) if timeline_path else None,
        memory_snapshot=str(snapshot_path) if snapshot_path else None, notes=notes,
    )


@dataclass
class ProfileDiff:
    """Per-op and per-stage time deltas between two profiles (``after`` − ``before``), in ms.

    UNet figures are per recorded denoising step, so profiles recorded with different
    ``record_steps`` compare fairly.
    """

    before: str
    after: str
    ops: Any  # DataFrame indexed by op name
    stages: Any  # DataFrame indexed by stage group


def _stage_ms(prof: ProfileResult) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for span in prof.spans:
        out[_stage_group(span.stage)] += span.duration_us / 1e3
    if "unet" in out:
        out["unet"] /= prof.record_steps
    return dict(out)


def _op_ms(prof: ProfileResult) -> dict[str, float]:
    on_device = any(r.self_device_us > 0 for r in prof.op_records)
    out: dict[str, float] = defaultdict(float)
    for r in prof.op_records:
        us = r.self_device_us if on_device else r.self_cpu_us
        out[r.name] += us / 1e3 / (prof.record_steps if r.stage.startswith("unet_step_") else 1)
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
