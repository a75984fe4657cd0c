"""Workflows that chain lab's measurements: what ``python -m lab profile|diagnose``, notebook 01 and the GPU
check run, as one function returning a record."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .benchmarking import BenchmarkResult
from .cases import Case
from .denoiser import kind_of
from .diagnosis import Diagnosis, Thresholds
from .flops import FlopsReport, Peak
from .profiling import ProfileResult
from .results import Record


@dataclass
class DiagnosisRun(Record):
    """A benchmark, a profile and (for a diagnosis) FLOPs and findings of one case, with the files written."""

    model: str
    case: Case
    out: str
    benchmark: BenchmarkResult
    profile: ProfileResult
    flops: FlopsReport | None = None
    diagnosis: Diagnosis | None = None
    artifacts: dict[str, str] = field(default_factory=dict)

    def to_markdown(self) -> str:
        parts = [f"**{self.model}** — {self.case.name}: {self.benchmark.cases[0].latency.median:.3f} s per image "
                 f"(median of {self.benchmark.repeats})", self.profile.ops(top=15).to_markdown()]
        if self.profile.has_kernels:
            parts.append(self.profile.kernels(top=10).to_markdown())
        if self.flops is not None:
            parts.append(self.flops.to_markdown())
        if self.diagnosis is not None:
            parts.append(self.diagnosis.to_markdown())
        parts.append("\n".join(f"- {k}: `{v}`" for k, v in self.artifacts.items()))
        return "\n\n".join(parts)

    def _repr_markdown_(self) -> str:
        return self.to_markdown()


def diagnose_run(model: str, case: Case, *, out: str | os.PathLike = "runs/diagnose", dtype: str = "fp32",
                 device: str = "auto", scheduler: str | None = None, recipe: str | None = None, repeats: int = 3,
                 record_steps: int = 2, with_stack: bool = False, memory_snapshot: bool = False,
                 thresholds: Thresholds | None = None, diagnosis: bool = True, progress: bool = True,
                 pipe=None, peaks: dict[str, Peak] | None = None) -> DiagnosisRun:
    """Benchmark, profile and (with ``diagnosis``) count FLOPs and diagnose one case; every artifact under ``out``.

    Args:
        pipe: an already prepared pipeline (then ``model``/``dtype``/``recipe`` only label the run).
        memory_snapshot: also write the CUDA allocator history (opt-in: see ``lab.profile``).
        peaks: matmul peaks by dtype already measured on this device (``measure_peak``); the one the UNet's
            dtype needs is measured here when missing.
    """
    from . import plots
    from ._checks import writable_dir
    from .benchmarking import benchmark
    from .diagnosis import diagnose
    from .flops import flops_report, matmul_dtype
    from .monitor import ResourceMonitor
    from .prepare import prepare
    from .profiling import profile
    from .results import atomic_write_text

    if record_steps > case.steps:
        from ._checks import LabError

        raise LabError(f"record_steps {record_steps} is more than the case's {case.steps} steps")
    out = writable_dir(out)
    if pipe is None:
        prepared = prepare(model, recipe, device=device, dtype=dtype, scheduler=scheduler, cases=[case])
        pipe, case = prepared.pipe, prepared.cases[0]
    monitor = ResourceMonitor(interval=0.05)
    bench = benchmark(pipe, case, warmup=1, repeats=repeats, progress=progress, monitor=monitor)
    artifacts = {"benchmark": str(bench.save(out / "benchmark.json"))}
    plots.plot_stages(bench, path=out / "stages.png")
    plots.plot_resources(monitor, path=out / "resources.png")
    artifacts.update(stages_plot=str(out / "stages.png"), resources_plot=str(out / "resources.png"))
    prof = profile(pipe, case, record_steps=record_steps, out_dir=out, with_stack=with_stack,
                   memory_snapshot=memory_snapshot)
    artifacts["profile"] = str(prof.save(out / "profile.json"))
    artifacts["trace"] = str(prof.export_chrome_trace(out / "trace.json.gz"))
    artifacts["tensorboard"] = prof.tensorboard_dir
    if prof.memory_snapshot:
        artifacts["memory_snapshot"] = prof.memory_snapshot
    run = DiagnosisRun(model=model, case=case, out=str(out), benchmark=bench, profile=prof, artifacts=artifacts)
    if not diagnosis:
        return run
    run.flops = flops_report(pipe, case, stage_seconds=bench.cases[0].stages.seconds(),
                             peak=(peaks or {}).get(matmul_dtype(pipe)))
    artifacts["flops"] = str(run.flops.save(out / "flops.json"))
    plots.plot_utilisation(run.flops, path=out / "utilisation.png")
    run.diagnosis = diagnose(bench, profile=prof, flops=run.flops, thresholds=thresholds, kind=kind_of(pipe))
    artifacts["diagnosis"] = str(run.diagnosis.save(out / "diagnosis.json"))
    atomic_write_text(out / "diagnosis.md", run.diagnosis.to_markdown() + "\n")
    artifacts["diagnosis_md"] = str(out / "diagnosis.md")
    return run
