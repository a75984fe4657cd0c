"""``compare()``: run recipes × cases × seeds against a baseline, resumably, one failure at a time.

Every run appends one JSON line to ``<out>/results.jsonl`` (flushed and fsynced) and saves its image
under ``<out>/images/<recipe>/``. Re-running with the same ``out`` skips runs already recorded as
``ok`` or ``skipped`` (errors are retried), so a crash or Ctrl-C loses nothing that finished.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import re
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ._checks import LabError, positive_int, writable_dir
from .benchmarking import StageSummary
from .cases import Case
from .memory import model_peak_mb
from .results import Record
from .stats import Latency

RESULTS = "results.jsonl"
# what a notebook or report shows by default: one screen wide
SUMMARY_COLUMNS = ("status", "latency_s", "latency_iqr_s", "speedup", "peak_mem_mb", "weight_mb", "ssim", "psnr",
                   "outliers", "reason")
DONE = ("ok", "skipped")


def slug(recipe: str) -> str:
    """A folder name for a recipe string."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", recipe)


@dataclass
class RunRecord(Record):
    """One (recipe, case, seed) run: its status and what was measured."""

    recipe: str
    case: str
    seed: int
    status: str  # ok | error | oom | skipped
    prompt: str = ""
    steps: int = 0
    guidance: float = 0.0
    error: str | None = None
    latency: Latency | None = None
    first_call_s: float | None = None
    apply_s: float | None = None
    peak_rss_mb: float | None = None
    rss_before_mb: float | None = None
    peak_cuda_allocated_mb: float | None = None
    cpu_percent: float | None = None
    stages: StageSummary | None = None
    weight_bytes: dict[str, int] = field(default_factory=dict)
    ssim: float | None = None
    psnr: float | None = None
    image: str | None = None
    created: str = ""

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.recipe, self.case, self.seed)


@dataclass
class Comparison(Record):
    """All runs of a comparison; ``to_frame()`` summarises them per recipe against the baseline."""

    model: str
    baseline: str
    out: str
    records: list[RunRecord]
    corrupt_lines: list[int] = field(default_factory=list)

    @classmethod
    def load(cls, out: str | os.PathLike, model: str = "", baseline: str | None = None) -> "Comparison":
        """Read ``<out>/results.jsonl``; a corrupt line is reported with its number and skipped."""
        path = Path(out) / RESULTS
        latest: dict[tuple, RunRecord] = {}
        corrupt: list[int] = []
        if path.exists():
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    rec = RunRecord.from_dict(json.loads(line))
                except (ValueError, TypeError, KeyError) as err:
                    corrupt.append(number)
                    warnings.warn(f"{path}:{number}: corrupt line skipped ({type(err).__name__}: {err})",
                                  stacklevel=2)
                    continue
                latest[rec.key] = rec  # a retried run supersedes its earlier line
        records = list(latest.values())
        meta = Path(out) / "comparison.json"
        if meta.exists():
            info = json.loads(meta.read_text())
            model, baseline = model or info.get("model", ""), baseline or info.get("baseline")
        baseline = baseline or (records[0].recipe if records else "")
        return cls(model=model, baseline=baseline, out=str(out), records=records, corrupt_lines=corrupt)

    def to_frame(self, full: bool = True):
        """Per recipe: latency and spread, speed-up, memory and its delta, weights, quality, outliers, status.

        One definition of speed-up everywhere: over the (case, seed) runs a recipe shares with the
        baseline, ``speedup`` is the geometric mean of baseline latency ÷ recipe latency (each run's median
        over its repeats), and ``latency_s`` is the geometric mean of the recipe's run medians. When every
        run is matched (the usual case) ``baseline latency_s / latency_s == speedup`` exactly, so a latency
        change and a speed-up are one number read two ways. ``outliers`` counts runs with a repeat above
        ``Latency.outlier_limit`` (the medians are robust to it; the flag says the machine was disturbed).

        Args:
            full: every column; False keeps the narrow set a notebook or report shows (``SUMMARY_COLUMNS``).
        """
        import pandas as pd

        from .stats import geomean

        base = {(r.case, r.seed): r for r in self.records if r.recipe == self.baseline and r.status == "ok"}
        rows = []
        for recipe in dict.fromkeys(r.recipe for r in self.records):
            runs = [r for r in self.records if r.recipe == recipe]
            ok = [r for r in runs if r.status == "ok"]
            statuses = sorted({r.status for r in runs})
            row = {"recipe": recipe, "status": ",".join(statuses), "runs": len(runs), "ok": len(ok)}
            if ok:
                med = statistics.median
                ratios = [base[(r.case, r.seed)].latency.median / r.latency.median
                          for r in ok if (r.case, r.seed) in base]
                mem = [_peak_mb(r) for r in ok]
                base_mem = [_peak_mb(b) for b in base.values()]
                outliers = [r for r in ok if r.latency.has_outlier]
                row.update(
                    latency_s=geomean([r.latency.median for r in ok]),
                    latency_iqr_s=med(r.latency.iqr for r in ok),
                    speedup=geomean(ratios) if ratios else None,
                    peak_mem_mb=max(mem),
                    peak_mem_delta_mb=max(mem) - max(base_mem) if base_mem else None,
                    weight_mb=sum(ok[0].weight_bytes.values()) / 2**20,
                    ssim=statistics.fmean(r.ssim for r in ok if r.ssim is not None)
                    if any(r.ssim is not None for r in ok) else None,
                    psnr=min((r.psnr for r in ok if r.psnr is not None), default=None),
                    first_call_s=max(r.first_call_s or 0.0 for r in ok),
                    apply_s=ok[0].apply_s,
                    outliers=len(outliers),
                    slowest_repeat_s=max(r.latency.max for r in ok),
                )
            else:
                row["reason"] = next((r.error for r in runs if r.error), "")
            rows.append(row)
        frame = pd.DataFrame(rows).set_index("recipe")
        if "reason" in frame:
            frame["reason"] = frame["reason"].fillna("")
        if "outliers" in frame:
            frame["outliers"] = frame["outliers"].fillna(0).astype(int)
        if not full:
            frame = frame[[c for c in SUMMARY_COLUMNS if c in frame]]
        return frame

    def outlier_runs(self) -> list[RunRecord]:
        """Runs whose slowest repeat is an outlier (``Latency.has_outlier``), for the report to name."""
        return [r for r in self.records if r.status == "ok" and r.latency.has_outlier]

    def to_markdown(self, digits: int = 3, full: bool = False) -> str:
        """The per-recipe table, narrow by default (``full=True``: every column)."""
        return self.to_frame(full=full).round(digits).to_markdown()

    def per_case(self):
        """Latency mean ± std (and median) per recipe and case, over the repeats of each run."""
        import pandas as pd

        rows = [{"recipe": r.recipe, "case": r.case, "seed": r.seed, "mean_s": r.latency.mean, "std_s": r.latency.std,
                 "median_s": r.latency.median, "n": r.latency.n, "ssim": r.ssim, "psnr": r.psnr}
                for r in self.records if r.status == "ok"]
        frame = pd.DataFrame(rows)
        if not frame.empty:
            frame["mean ± std (s)"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(frame["mean_s"], frame["std_s"])]
            frame = frame.set_index(["recipe", "case", "seed"])
        return frame

    def pareto(self, objectives: Sequence[tuple[str, str]] = (("latency_s", "min"), ("peak_mem_mb", "min"),
                                                              ("ssim", "max"))):
        """Recipes no other recipe beats on every objective (column, "min" | "max") at once."""
        from .stats import pareto_indices

        frame = self.to_frame()
        cols = [c for c, _ in objectives]
        frame = frame[frame["ok"] > 0].dropna(subset=cols)
        front = pareto_indices(frame[cols].to_numpy().tolist(), [s for _, s in objectives])
        return frame.iloc[sorted(front)][cols + ["speedup", "weight_mb"]]

    def interactions(self):
        """For each combination whose parts also ran alone: expected speed-up (product of the parts'
        speed-ups, as if independent) against the measured one. ``gain_ratio`` < 1: the parts overlap."""
        import math

        import pandas as pd

        frame = self.to_frame()
        speed = frame["speedup"].dropna().to_dict() if "speedup" in frame else {}
        rows = []
        for recipe, measured in speed.items():
            parts = recipe.split("+")
            if len(parts) < 2 or not all(p in speed for p in parts):
                continue
            expected = math.prod(speed[p] for p in parts)
            rows.append({"combination": recipe, "parts": len(parts), "expected_speedup": expected,
                         "measured_speedup": measured, "gain_ratio": measured / expected})
        return pd.DataFrame(rows, columns=["combination", "parts", "expected_speedup", "measured_speedup",
                                           "gain_ratio"]).set_index("combination")

    def _repr_markdown_(self) -> str:
        return f"**{self.model}** vs baseline `{self.baseline}` ({self.out})\n\n" + self.to_markdown()

    def record(self, recipe: str, case: str, seed: int = 0) -> RunRecord:
        return next(r for r in self.records if r.key == (recipe, case, seed))


def _peak_mb(r: RunRecord) -> float:
    return model_peak_mb(sum(r.weight_bytes.values()), r.peak_rss_mb, r.rss_before_mb, r.peak_cuda_allocated_mb)


def _append(path: Path, record: RunRecord) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record.to_dict()) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _status(error: str) -> str:
    return "oom" if "OutOfMemoryError" in error or "out of memory" in error.lower() else "error"


def compare(
    model: str,
    recipes: Sequence[str],
    cases: Sequence[Case] | Case,
    *,
    seeds: Sequence[int] = (0,),
    repeats: int = 3,
    warmup: int = 1,
    out: str | os.PathLike = "runs/compare",
    dtype: str = "fp32",
    device: str = "auto",
    progress: bool = True,
) -> Comparison:
    """Benchmark each recipe string (the first is the baseline) on every case and seed.

    Each recipe gets a freshly loaded pipeline; a recipe that cannot apply here is recorded as
    ``skipped`` with the reason; an exception or out-of-memory is recorded and the sweep goes on.
    """
    from tqdm.auto import tqdm

    from .benchmarking import benchmark
    from .env import Environment, RecipeEnv
    from .models import weight_bytes
    from .prepare import prepare
    from .quality import psnr, ssim
    from .recipes import parse

    cases = [cases] if isinstance(cases, Case) else list(cases)
    recipes = list(recipes)
    if not recipes:
        raise LabError("compare needs at least one recipe (the first is the baseline)")
    if not cases:
        raise LabError("compare needs at least one case")
    positive_int("repeats", repeats)
    positive_int("warmup", warmup, minimum=0)
    if not seeds:
        raise LabError("compare needs at least one seed")
    plans = {text: parse(text) for text in recipes}  # every name and combination checked before any work
    out = writable_dir(out)
    path = out / RESULTS
    baseline = recipes[0]
    meta = {"model": model, "baseline": baseline, "recipes": recipes, "dtype": dtype}
    (out / "comparison.json").write_text(json.dumps(meta, indent=2))
    existing = Comparison.load(out, model, baseline)
    done = {r.key for r in existing.records if r.status in DONE}
    env = RecipeEnv.detect(device)
    device = env.device
    (out / "environment.json").write_text(Environment.capture(device).to_json())

    def now() -> str:
        return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    jobs = [(text, case, seed) for text in recipes for case in cases for seed in seeds]
    bar = tqdm(total=len(jobs), desc="compare", unit="run", disable=not progress)
    bar.update(sum((t, c.name, s) in done for t, c, s in jobs))
    for text in recipes:
        todo = [(c, s) for c, s in ((c, s) for c in cases for s in seeds) if (text, c.name, s) not in done]
        if not todo:
            continue
        bar.set_postfix_str(text)
        pipe, error, apply_s, reasons = None, None, None, None
        try:
            prepared = prepare(model, plans[text], device=device, dtype=dtype, cases=cases, env=env, strict=False)
            pipe, apply_s, reasons = prepared.pipe, prepared.apply_s, prepared.skipped
            error = reasons
        except Exception as err:  # a recipe that fails to apply is a result, not a crash
            error = f"{type(err).__name__}: {err}"
        overrides = plans[text].case_overrides()
        for case, seed in todo:
            run_case = case.with_overrides(seed=seed, **overrides)
            base = RunRecord(recipe=text, case=case.name, seed=seed, status="skipped" if reasons else "error",
                             prompt=run_case.prompt, steps=run_case.steps, guidance=run_case.guidance,
                             error=error, apply_s=apply_s, created=now())
            if pipe is None:
                _append(path, base)
                bar.update()
                continue
            image_dir = out / "images" / slug(text)
            named = run_case.with_overrides(name=f"{case.name}-s{seed}")
            result = benchmark(pipe, named, warmup=warmup, repeats=repeats, image_dir=image_dir, progress=False)
            c = result.cases[0]
            if c.error:
                base.status, base.error = _status(c.error), c.error
            else:
                base.status = "ok"
                base.latency, base.first_call_s = c.latency, c.first_call_s
                base.peak_rss_mb, base.peak_cuda_allocated_mb = c.peak_rss_mb, c.peak_cuda_allocated_mb
                base.rss_before_mb, base.cpu_percent, base.stages = c.rss_before_mb, c.cpu_percent, c.stages
                base.weight_bytes = weight_bytes(pipe)
                base.image = str(Path(c.image).relative_to(out))
                reference = out / "images" / slug(baseline) / f"{case.name}-s{seed}.png"
                if reference.exists():
                    base.ssim, base.psnr = ssim(c.image, reference), psnr(c.image, reference)
            _append(path, base)
            bar.update()
        del pipe
        gc.collect()
    bar.close()
    return Comparison.load(out, model, baseline)
