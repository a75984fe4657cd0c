"""What a worker is given (``Task``: one recipe on one model with its cases and seeds) and returns (``Outcome``).

Both are JSON: an image travels as base64 PNG bytes and a first-step update as base64 safetensors bytes,
so a worker on another machine needs no folder shared with the parent, and nothing is pickled.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cases import Case
from ..experiments import _MEASURED, RunRecord, _status, slug
from ..results import Record


@dataclass
class Task(Record):
    """One measured run: ``recipe`` on ``model`` for each (case name, seed) in ``runs``, on a fresh pipeline."""

    model: str
    recipe: str
    baseline: str  # the first-step update is taken only when it is comparable with the baseline's
    dtype: str
    device: str
    cases: list[Case]
    runs: list[tuple[str, int]]
    warmup: int
    repeats: int
    purpose: str = "run"  # "recheck": the baseline measured again, a job of its own in every ledger

    @property
    def key(self) -> str:
        """A name for this task that changes whenever anything it measures changes (job ledgers use it)."""
        digest = hashlib.sha256(self.to_json(indent=None).encode("utf-8")).hexdigest()[:16]
        return f"{slug(self.recipe)[:60]}-{digest}"

    def record(self, case: Case, seed: int, status: str, error: str | None) -> RunRecord:
        """The run record of (case, seed) before anything is measured: what ran and, if known, why it failed."""
        from ..recipes import parse

        run_case = case.with_overrides(seed=seed, **parse(self.recipe).case_overrides())
        return RunRecord(recipe=self.recipe, case=case.name, seed=seed, status=status, model=self.model,
                         prompt=run_case.prompt,
                         steps=run_case.steps, guidance=run_case.guidance, error=error,
                         created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def pairs(self) -> list[tuple[Case, int]]:
        by_name = {c.name: c for c in self.cases}
        return [(by_name[name], int(seed)) for name, seed in self.runs]


@dataclass
class Measured(Record):
    """One (case, seed) run as the worker measured it; the parent adds SSIM/PSNR/fidelity and writes the files."""

    record: RunRecord
    image_png: str | None = None  # base64 PNG of the run's last image
    update: str | None = None  # base64 safetensors of the first-step update (lab.fidelity)
    trajectory: str | None = None  # base64 safetensors of every step's latents (lab.trajectory)

    def image_bytes(self) -> bytes | None:
        return base64.b64decode(self.image_png) if self.image_png is not None else None

    def update_bytes(self) -> bytes | None:
        return base64.b64decode(self.update) if self.update is not None else None

    def trajectory_bytes(self) -> bytes | None:
        return base64.b64decode(self.trajectory) if self.trajectory is not None else None


@dataclass
class Outcome(Record):
    """What a task produced: one ``Measured`` per run, or, when the worker died, records saying why."""

    key: str
    recipe: str
    runs: list[Measured] = field(default_factory=list)
    worker: dict[str, Any] = field(default_factory=dict)  # pid, host, CUDA_VISIBLE_DEVICES, cache dirs, seconds
    fatal: str | None = None  # the model itself could not load: nothing in the sweep can run

    @classmethod
    def died(cls, task: Task, error: str) -> Outcome:
        """Every run of ``task`` recorded as failed with ``error`` (``oom`` when it names running out of memory)."""
        status = _status(error)
        return cls(key=task.key, recipe=task.recipe,
                   runs=[Measured(task.record(case, seed, status, error)) for case, seed in task.pairs()])


def measure(task: Task) -> Outcome:
    """Prepare ``task.recipe`` on a fresh pipeline and benchmark each of its runs, in this process."""
    parts = list(measure_each(task))
    return Outcome(key=task.key, recipe=task.recipe, runs=[m for part in parts for m in part.runs],
                   worker=parts[0].worker, fatal=parts[0].fatal)


def measure_each(task: Task) -> Iterator[Outcome]:
    """``measure`` one run at a time: an outcome per (case, seed) as it finishes, so in-process sweeps append
    each run at once (a crash mid-recipe loses nothing finished). A ``threads-N`` recipe's intra-op count is
    put back afterwards, so in-process the next task runs with the process's own."""
    import torch

    intra = torch.get_num_threads()
    try:
        yield from _measure_each(task)
    finally:
        torch.set_num_threads(intra)


def _measure_each(task: Task) -> Iterator[Outcome]:
    from ..env import RecipeEnv
    from ..models import ModelUnavailableError
    from ..prepare import prepare
    from ..recipes import parse

    plan = parse(task.recipe)
    env = RecipeEnv.detect(task.device)
    pipe, error, apply_s, skipped = None, None, None, None
    start = time.perf_counter()
    try:
        prepared = prepare(task.model, plan, device=env.device, dtype=task.dtype, cases=task.cases, env=env,
                           strict=False)
        pipe, apply_s, skipped = prepared.pipe, prepared.apply_s, prepared.skipped
        error = skipped
    except ModelUnavailableError as err:
        yield Outcome(key=task.key, recipe=task.recipe, fatal=str(err))
        return
    except Exception as err:  # noqa: BLE001 - a recipe that fails to apply is a result, not a crash
        error = f"{type(err).__name__}: {err}"
    worker = {"prepare_s": time.perf_counter() - start}
    with tempfile.TemporaryDirectory(prefix="lab-images-") as images:
        for case, seed in task.pairs():
            record = task.record(case, seed, "skipped" if skipped else "error", error)
            record.apply_s = apply_s
            run = _measure_run(task, plan, pipe, case, seed, record, Path(images)) if pipe is not None \
                else Measured(record)
            yield Outcome(key=task.key, recipe=task.recipe, runs=[run], worker=worker)


def _measure_run(task: Task, plan, pipe, case: Case, seed: int, record: RunRecord, images: Path) -> Measured:
    from safetensors.torch import save

    from ..benchmarking import benchmark
    from ..fidelity import comparable, first_step_update
    from ..models import weight_bytes
    from ..recipes import parse

    run_case = case.with_overrides(seed=seed, **plan.case_overrides())
    name = f"{case.name}-s{seed}"
    result = benchmark(pipe, run_case.with_overrides(name=name), warmup=task.warmup, repeats=task.repeats,
                       image_dir=images, progress=False)
    c = result.cases[0]
    if c.error:
        record.status, record.error = _status(c.error), c.error
        return Measured(record)
    record.status, record.error = "ok", None
    for name_ in _MEASURED:
        setattr(record, name_, getattr(c, name_))
    import torch

    record.threads = {"intra_op": result.env.torch_threads, "inter_op": torch.get_num_interop_threads()}
    record.weight_bytes = weight_bytes(pipe)
    measured = Measured(record, image_png=base64.b64encode(Path(c.image).read_bytes()).decode("ascii"))
    _trajectory(plan, parse(task.baseline), pipe, run_case, measured)
    if why := comparable(plan, parse(task.baseline)):
        record.fidelity_note = why
        return measured
    try:
        update = first_step_update(pipe, run_case)
    except Exception as err:  # noqa: BLE001 - a metric that cannot be taken never fails the run
        record.fidelity_note = f"first-step update failed: {type(err).__name__}: {err}"
        return measured
    if not torch.isfinite(update).all():  # a broken kernel or overflow: the run's numbers describe garbage
        record.status = "error"
        record.error = ("the first denoising step produced NaN or inf: this combination is numerically broken here "
                        "(its image is not a picture), so its timing is not a result")
        return measured
    measured.update = base64.b64encode(save({"update": update.contiguous()})).decode("ascii")
    return measured


def _trajectory(plan, baseline_plan, pipe, case: Case, measured: Measured) -> None:
    """One more call from seeded latents: every step's latents (when comparable with the baseline's) and, for a
    cache, what it computed and skipped; a metric that cannot be taken never fails the run."""
    import contextlib

    from safetensors.torch import save

    from ..fidelity import comparable
    from ..recipes.caches import count_evaluations, is_cache
    from ..trajectory import trajectory_latents

    record = measured.record
    try:
        with count_evaluations(pipe) if is_cache(plan) else contextlib.nullcontext() as counts:
            latents = trajectory_latents(pipe, case)
    except Exception as err:  # noqa: BLE001
        note = f"trajectory failed: {type(err).__name__}: {err}"
        record.fidelity_note = f"{record.fidelity_note}; {note}" if record.fidelity_note else note
        return
    if counts is not None:
        record.cache_skips = counts
    if comparable(plan, baseline_plan) is None:
        measured.trajectory = base64.b64encode(save({"latents": latents.contiguous()})).decode("ascii")
