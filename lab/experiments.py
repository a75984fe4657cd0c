"""``compare()``: run recipes × cases × seeds against a baseline, resumably, one failure at a time.

Every run appends one JSON line to ``<out>/results.jsonl`` (flushed and fsynced) and saves its image
under ``<out>/images/<recipe>/``. Re-running with the same ``out`` skips runs already recorded as
``ok`` or ``skipped`` (errors are retried), so a crash or Ctrl-C loses nothing that finished.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import re
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ._checks import LabError, check_seed, output_dir, positive_int, read_file_bytes
from .benchmarking import StageSummary
from .cases import Case
from .env import RecipeEnv
from .fidelity import Fidelity
from .host import HostLoad
from .power import Energy
from .memory import model_peak_mb
from .paths import LOCK, file_stem, inside, run_lock, short_hash  # noqa: F401 - LOCK, run_lock: their old home
from .results import Record, atomic_write_text
from .stats import Latency, Verdict, judge
from .trajectory import Trajectory

if TYPE_CHECKING:
    from .executors import ExecutorConfig

RESULTS = "results.jsonl"
RECHECKS = "rechecks.jsonl"  # the baseline measured again after the candidates: drift checks, not results
RESULTS_LIMIT = 1024 * 2**20  # bytes: a million runs' lines; beyond it the file is not a results file
META = "comparison.json"
# what a notebook or report shows by default: one screen wide
SUMMARY_COLUMNS = ("status", "latency_s", "latency_iqr_s", "speedup", "verdict", "peak_mem_mb", "weight_mb", "ssim",
                   "psnr", "fidelity_rel_err", "trajectory_rel_err", "cache_skipped", "outliers", "host", "reason")
DONE = ("ok", "skipped")
STATUSES = ("ok", "error", "oom", "skipped")


def slug(recipe: str) -> str:
    """A folder name for a recipe string (bounded; a short hash where the plain name would not be safe)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", recipe)
    return name if len(name) <= 80 and name.strip(".") else f"{name[:60].strip('.') or 'r'}-{short_hash(recipe)}"


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
    fidelity: Fidelity | None = None  # first-step update against the baseline's (lab.fidelity)
    fidelity_note: str | None = None  # why there is none
    model: str = ""  # the model the row was measured on ("" in rows written before it was recorded)
    worker: dict | None = None  # the isolated worker that measured it: pid, host, device slot, cache dirs, seconds
    host: HostLoad | None = None  # what else the host did while it was measured (lab.host)
    recheck: bool = False  # the baseline measured again at the end of a sweep: a drift check, not a result
    energy: Energy | None = None  # joules per image and mean watts of the measured calls (lab.power), or why not
    threads: dict | None = None  # CPU threads in effect while measuring: {"intra_op": n, "inter_op": m}
    trajectory: Trajectory | None = None  # every step's latents against the baseline's (lab.trajectory)
    cache_skips: dict | None = None  # a cache's denoiser calls, block/attention evaluations computed and skipped

    def __post_init__(self) -> None:
        # what a resume and a report rely on; a line that breaks it is set aside by Comparison.load
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {self.status!r}")
        if self.status == "ok" and not isinstance(self.latency, Latency):
            raise ValueError("an 'ok' run has no latency")

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.recipe, self.case, self.seed)

    @property
    def peak_mem_mb(self) -> float | None:
        """Peak memory attributable to the model in this run (``lab.memory.model_peak_mb``)."""
        return model_peak_mb(sum(self.weight_bytes.values()), self.peak_rss_mb, self.rss_before_mb,
                             self.peak_cuda_allocated_mb)


@dataclass
class Comparison(Record):
    """All runs of a comparison; ``to_frame()`` summarises them per recipe against the baseline."""

    model: str
    baseline: str
    out: str
    records: list[RunRecord]
    corrupt_lines: list[int] = field(default_factory=list)
    rechecks: list[RunRecord] = field(default_factory=list)  # the baseline re-measured after the candidates

    @classmethod
    def load(cls, out: str | os.PathLike, model: str = "", baseline: str | None = None) -> "Comparison":
        """Read ``<out>/results.jsonl`` (and the baseline's re-measurements, ``rechecks.jsonl``); a corrupt line is
        reported with its number and skipped."""
        info = _read_meta(Path(out))
        if info:
            model, baseline = model or info.get("model", ""), baseline or info.get("baseline")
        latest, corrupt = _read_runs(Path(out) / RESULTS, model)
        rechecks, _ = _read_runs(Path(out) / RECHECKS, model)
        records = list(latest.values())
        baseline = baseline or (records[0].recipe if records else "")
        return cls(model=model, baseline=baseline, out=str(out), records=records, corrupt_lines=corrupt,
                   rechecks=[r for r in rechecks.values() if r.recipe == baseline])

    def to_frame(self, full: bool = True):
        """Per recipe: latency and spread, speed-up, memory and its delta, weights, quality, outliers, status.

        One definition of speed-up everywhere: over the (case, seed) runs a recipe shares with the
        baseline, ``speedup`` is the geometric mean of baseline latency ÷ recipe latency (each run's median
        over its repeats), and ``latency_s`` is the geometric mean of the recipe's run medians. When every
        run is matched (the usual case) ``baseline latency_s / latency_s == speedup`` exactly, so a latency
        change and a speed-up are one number read two ways. ``outliers`` counts runs with a repeat above
        ``Latency.outlier_limit`` (the medians are robust to it; the flag says the machine was disturbed).
        ``verdict`` (with ``speedup_low``/``speedup_high``, a bootstrap interval over the repeats) says whether
        the speed-up can be believed (``verdicts``); ``host`` names the contention a recipe's runs saw.

        Args:
            full: every column; False keeps the narrow set a notebook or report shows (``SUMMARY_COLUMNS``).
        """
        import pandas as pd

        from .recipes.caches import skipped_fraction

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
                mem = [r.peak_mem_mb for r in ok]
                base_mem = [b.peak_mem_mb for b in base.values()]
                outliers = [r for r in ok if r.latency.has_outlier]
                row.update(
                    latency_s=statistics.geometric_mean([r.latency.median for r in ok]),
                    latency_iqr_s=med(r.latency.iqr for r in ok),
                    speedup=statistics.geometric_mean(ratios) if ratios else None,
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
                busy = self._busy(ok)
                row["host"] = "busy" if busy else ("quiet" if any(r.host for r in ok) else None)  # why: ``busy``
                if (verdict := self.verdict(recipe)) is not None:
                    row.update(speedup_low=verdict.low, speedup_high=verdict.high,
                               verdict="baseline" if recipe == self.baseline else verdict.verdict)
                energy = [r.energy for r in ok if r.energy is not None and r.energy.readable]
                if energy:
                    row.update(energy_j_per_image=statistics.median(e.joules_per_image for e in energy),
                               mean_watts=statistics.median(e.mean_watts for e in energy))
                fidelity = [r.fidelity for r in ok if r.fidelity is not None]
                if fidelity:  # the worst run: a recipe is as faithful as its least faithful image
                    row.update(fidelity_cos=min(f.cosine for f in fidelity),
                               fidelity_rel_err=max(f.rel_error for f in fidelity))
                trajectories = [r.trajectory for r in ok if r.trajectory is not None]
                if trajectories:  # the worst run again, at the end of the trajectory and at any step
                    row.update(trajectory_rel_err=max(t.final_rel_error for t in trajectories),
                               trajectory_max_drift=max(t.max_drift for t in trajectories))
                skips = [f for r in ok if (f := skipped_fraction(r.cache_skips)) is not None]
                if skips:
                    row.update(cache_skipped=statistics.fmean(skips),
                               cache_calls=statistics.fmean(r.cache_skips["denoiser_calls"] for r in ok
                                                            if r.cache_skips))
            else:
                row["reason"] = next((r.error for r in runs if r.error), "")
            rows.append(row)
        frame = pd.DataFrame(rows).set_index("recipe")
        if "reason" in frame:
            frame["reason"] = frame["reason"].fillna("")
        if "outliers" in frame:
            frame["outliers"] = frame["outliers"].fillna(0).astype(int)
        return frame if full else narrow(frame)

    @staticmethod
    def _busy(runs: Sequence[RunRecord]) -> str:
        """The contention any of these runs was measured under, in words ("" when every run was quiet)."""
        busy = HostLoad.combine([r.host for r in runs if r.host and r.host.busy])
        return "; ".join(busy.reasons) if busy else ""

    def verdict(self, recipe: str) -> Verdict | None:
        """Whether ``recipe``'s speed-up over the baseline can be believed (``lab.stats.judge``); None if unmatched.

        Where the baseline was re-measured after the candidates and did not drift, its repeats from both
        measurements are pooled: the reference spans the sweep instead of its first minutes. Where it drifted,
        the candidate ran somewhere between a faster and a slower baseline: a verdict stands only if it holds
        against each of the two measurements, and is ``untrusted`` otherwise.
        """
        base = {(r.case, r.seed): r for r in self.records if r.recipe == self.baseline and r.status == "ok"}
        again = {(r.case, r.seed): r for r in self.rechecks if r.status == "ok"}
        pairs = [(base[(r.case, r.seed)], r) for r in self.records
                 if r.recipe == recipe and r.status == "ok" and (r.case, r.seed) in base]
        if not pairs:
            return None
        busy = self._busy([run for pair in pairs for run in pair] + [again[k] for k in again if k in base])
        if busy:
            return judge([(b.latency, r.latency) for b, r in pairs], busy=busy)

        def reference(b: RunRecord) -> Latency:
            key = (b.case, b.seed)
            return Latency.pooled([b.latency, again[key].latency]) if key in again else b.latency

        pooled = judge([(reference(b), r.latency) for b, r in pairs])
        if not (drift := self.drift):
            return pooled
        first = judge([(b.latency, r.latency) for b, r in pairs])
        last = judge([(again[(b.case, b.seed)].latency if (b.case, b.seed) in again else b.latency, r.latency)
                      for b, r in pairs])
        low, high = min(first.low, last.low), max(first.high, last.high)
        if first.verdict == last.verdict and first.distinguishable:
            return Verdict(pooled.speedup, low, high, first.verdict,
                           f"holds against the baseline's first and last measurement ({drift})")
        return Verdict(pooled.speedup, low, high, "untrusted",
                       f"{drift}; against its first measurement {first.speedup:.2f}× ({first.verdict}), against "
                       f"its last {last.speedup:.2f}× ({last.verdict})")

    def verdicts(self) -> dict[str, Verdict]:
        """Every successful recipe but the baseline: its ``Verdict``."""
        out = {}
        for recipe in dict.fromkeys(r.recipe for r in self.records if r.recipe != self.baseline):
            if (v := self.verdict(recipe)) is not None:
                out[recipe] = v
        return out

    @property
    def busy(self) -> str:
        """The contention any run of this comparison saw ("" when the host was quiet throughout)."""
        return self._busy([r for r in self.records if r.status == "ok"] + [r for r in self.rechecks if r.status == "ok"])

    @property
    def drift(self) -> str:
        """How the baseline moved between its first measurement and its re-measurement after the candidates
        ("" when it did not move distinguishably, or was not re-measured)."""
        base = {(r.case, r.seed): r for r in self.records if r.recipe == self.baseline and r.status == "ok"}
        pairs = [(base[(r.case, r.seed)], r) for r in self.rechecks if r.status == "ok" and (r.case, r.seed) in base]
        if not pairs:
            return ""
        v = judge([(b.latency, r.latency) for b, r in pairs])
        if not v.distinguishable:
            return ""
        return (f"the baseline `{self.baseline}` drifted during the sweep: re-measured at the end it ran "
                f"{1 / v.speedup:.2f}× its first time (interval {1 / v.high:.2f}–{1 / v.low:.2f})")

    def energy_notes(self) -> list[str]:
        """Why successful runs have no energy figure (one line per distinct reason; empty when all have one)."""
        return sorted({(r.energy.note if r.energy is not None else "recorded before lab measured energy") or ""
                       for r in self.records if r.status == "ok" and (r.energy is None or not r.energy.readable)})

    def outlier_runs(self) -> list[RunRecord]:
        """Runs whose slowest repeat is an outlier (``Latency.has_outlier``), for the report to name."""
        return [r for r in self.records if r.status == "ok" and r.latency.has_outlier]

    @property
    def random_weights(self) -> bool:
        """The model is an embedded random-weight pipeline: image SSIM/PSNR against the baseline mean nothing."""
        from .models import EMBEDDED

        return self.model in EMBEDDED and not EMBEDDED[self.model].trained

    def to_markdown(self, digits: int = 3, full: bool = False) -> str:
        """The per-recipe table, narrow by default (``full=True``: every column)."""
        table = self.to_frame(full=full).round(digits).to_markdown()
        if busy := self.busy:
            table += (f"\n\nMeasured under contention ({busy}): no speed-up in this table can be believed "
                      "(verdict `untrusted`); rerun on a quiet host.")
        if not busy and (drift := self.drift):  # under contention the drift is its effect, already said
            table += (f"\n\nBaseline drift: {drift}. A verdict stands only where it holds against both of the "
                      "baseline's measurements; the others are `untrusted` (the host changed under the sweep).")
        if self.random_weights:
            table += (f"\n\n{self.model} has random weights: image SSIM/PSNR against the baseline are not meaningful "
                      "(trajectories diverge); read fidelity_rel_err (first denoising step against the baseline's, "
                      "lab.fidelity) and trajectory_rel_err (the final latent against the baseline's, "
                      "lab.trajectory) instead.")
        return table

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
        extra = [c for c in ("speedup", "verdict", "weight_mb", "host") if c in frame]
        return frame.iloc[sorted(front)][cols + extra]

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


def narrow(frame):
    """The one-screen columns (``SUMMARY_COLUMNS``) of a ``Comparison.to_frame`` summary."""
    # a column no run filled (host load in files written before it was recorded) says nothing
    return frame[[c for c in SUMMARY_COLUMNS if c in frame and (c in ("speedup", "reason") or frame[c].notna().any())]]


def successful(frame):
    """The rows of a ``Comparison.to_frame`` summary whose recipe had at least one successful run."""
    return frame[frame["ok"] > 0] if "ok" in frame else frame


def _read_runs(path: Path, model: str) -> tuple[dict[tuple, RunRecord], list[int]]:
    """The runs of a JSON-lines file by key (a retried run supersedes its earlier line), and its corrupt line numbers."""
    latest: dict[tuple, RunRecord] = {}
    corrupt: list[int] = []
    if not path.exists():
        return latest, corrupt
    # bounded, and a FIFO or a device is refused (never a hang); a torn multibyte char is one bad line
    text = read_file_bytes(path, "results file", RESULTS_LIMIT).decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = RunRecord.from_dict(json.loads(line))
            if model and rec.model and rec.model != model:
                raise ValueError(f"a run of model {rec.model!r}, not of this run's {model!r}")
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            corrupt.append(number)
            warnings.warn(f"{path}:{number}: corrupt line skipped ({type(err).__name__}: {err})", stacklevel=3)
            continue
        latest[rec.key] = rec
    return latest, corrupt


def _append(path: Path, record: RunRecord) -> None:
    """Append one JSON line and fsync it; on failure (a full disk) cut the file back to where it was."""
    data = (json.dumps(record.to_dict()) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)", str(path))
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):  # a torn line would swallow the next append on resume
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def repair_results(path: str | os.PathLike) -> int:
    """Cut a torn last line (no trailing newline: a kill or a full disk mid-append) off ``path``.

    The fragment is appended to ``<path>.corrupt`` and a warning names it, so the next append starts on
    a fresh line instead of being glued to the fragment and lost. Returns the bytes cut off.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        fragment = data[keep:]
        with open(path.with_name(path.name + ".corrupt"), "ab") as bad:
            bad.write(fragment + b"\n")
            bad.flush()
            os.fsync(bad.fileno())
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    warnings.warn(f"{path}: a torn last line ({len(fragment)} bytes) was moved to {path.name}.corrupt; "
                  "its run will be done again", stacklevel=2)
    return len(fragment)


# the keys of comparison.json and the types a resume relies on
_META_TYPES = {"model": str, "baseline": str, "dtype": str, "recipes": list, "identity": dict}


def _read_meta(out: Path) -> dict | None:
    """``comparison.json`` as a dict, or None when absent; unreadable, not an object or holding a key of the
    wrong type: a warning and None (so a resume cannot check it, and refuses)."""
    meta = out / META
    if not meta.exists():
        return None
    try:
        info = json.loads(read_file_bytes(meta, "run settings", 2**20).decode("utf-8"))
    except (OSError, ValueError) as err:  # LabError (a FIFO, too large) is a ValueError
        warnings.warn(f"{meta}: unreadable ({type(err).__name__}: {err})", stacklevel=3)
        return None
    if not isinstance(info, dict):
        warnings.warn(f"{meta}: not a JSON object", stacklevel=3)
        return None
    wrong = [k for k, tp in _META_TYPES.items() if k in info and not isinstance(info[k], tp)]
    if wrong or not all(isinstance(r, str) for r in info.get("recipes", [])):
        warnings.warn(f"{meta}: {', '.join(wrong) or 'recipes'} of the wrong type", stacklevel=3)
        return None
    return info


def _identity(model: str, dtype: str, device: str, cases: Sequence[Case], seeds: Sequence[int], repeats: int,
              warmup: int) -> dict:
    """What a run directory's numbers depend on, besides the recipe: a resume must match it exactly."""
    return {"model": model, "dtype": dtype, "device": device,
            "cases": [c.to_dict() for c in cases], "seeds": list(seeds), "repeats": repeats, "warmup": warmup}


def _check_resume(out: Path, info: dict | None, identity: dict, baseline: str, has_results: bool) -> None:
    """Refuse to resume a run directory that was made with other settings (its numbers would be relabelled)."""
    if info is None:
        if has_results:
            raise LabError(f"{str(out)!r} holds results but no readable {META}, so its settings cannot be "
                           "checked; pass a new --out (or restore the file)")
        return
    recorded = info.get("identity")
    if recorded is None:  # written before run identities were recorded: check what it has
        recorded = {k: info[k] for k in ("model", "dtype") if k in info}
    diffs = []
    for name, value in identity.items():
        if name in recorded and recorded[name] != value:
            diffs.append(name if name == "cases" else f"{name} {recorded[name]!r} (now {value!r})")
    if info.get("baseline") not in (None, baseline):
        diffs.append(f"baseline {info['baseline']!r} (now {baseline!r})")
    if diffs:
        detail = "; ".join(d if " " in d else f"{d} (prompts, steps, size, guidance or seed differ)" for d in diffs)
        raise LabError(f"run directory {str(out)!r} was made with other settings: {detail}. Resume it with the "
                       "same settings (new recipes may be added), or pass a new --out")


def _prime(model: str, plan, case: Case, device: str, dtype: str, env) -> None:
    """One discarded load and call, so the baseline is measured in the same process state as the others.

    The first pipeline call in a process grows its resident memory for good (thread pools, allocator
    arenas, kernel caches); measured inside the first recipe, that growth would inflate its peak memory.
    """
    import torch

    from .prepare import prepare

    intra = torch.get_num_threads()  # a threads-N baseline primed here must not set the next runs' threads
    try:
        prepared = prepare(model, plan, device=device, dtype=dtype, cases=[case], env=env, strict=False)
        if prepared.pipe is not None:
            call = prepared.cases[0].with_overrides(steps=min(prepared.cases[0].steps, 2))
            prepared.pipe(generator=torch.Generator("cpu").manual_seed(call.seed), **call.pipeline_kwargs())
    except Exception:  # noqa: BLE001 - priming is best effort: the real run records any failure
        pass
    finally:
        prepared = None
        torch.set_num_threads(intra)
        gc.collect()


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
    prime: bool = True,
    isolate: bool | None = None,
    executor: str | ExecutorConfig = "local",
    recheck: bool = True,
) -> Comparison:
    """Benchmark each recipe string (the first is the baseline) on every case and seed.

    Each recipe gets a freshly loaded pipeline; a recipe that cannot apply here is recorded as
    ``skipped`` with the reason; an exception or out-of-memory is recorded and the sweep goes on.
    A model that cannot load at all stops the sweep with ``ModelUnavailableError``.

    ``out`` is locked for the whole sweep (a second process fails at once) and records what the runs
    were made with (``comparison.json``): resuming with another model, dtype, device, cases, seeds,
    repeats or warm-up is refused; adding recipes to a finished run is allowed.

    Each recipe's runs are one task, measured by default in a fresh worker process (``lab.executors``)
    with cold compile caches: what one recipe leaves behind (heap, caches, global settings) cannot reach
    the next. The parent alone writes ``results.jsonl`` and computes SSIM/PSNR/fidelity from what the
    workers send back.

    Args:
        prime: in-process only: one discarded load and call before the baseline, so run order cannot change
            peak memory (an isolated worker starts fresh for every recipe).
        isolate: run each recipe in its own worker (default, unless ``LAB_ISOLATE=0``); False runs them in
            this process, one after another: quicker for an interactive cell, but figures may depend on order.
        executor: ``"local"``, ``"submitit"``, ``"ray"`` or an ``lab.executors.ExecutorConfig`` with options.
        recheck: after the candidates, measure the baseline's first run once more; where it moved
            (``Comparison.drift``) a speed-up is believed only if it holds against both measurements.
    """
    from tqdm.auto import tqdm

    from .executors import executor_config, isolate_default

    cases, recipes, seeds, plans, env = _checked(model, recipes, cases, seeds, repeats, warmup, dtype, device)
    config = executor_config(executor)  # bad executor options are refused before out exists
    isolate = isolate_default() if isolate is None else isolate
    baseline = recipes[0]
    identity = _identity(model, dtype, env.device, cases, seeds, repeats, warmup)
    with output_dir(out) as out, run_lock(out):
        done = _open_run(out, model, baseline, recipes, dtype, identity, env.device)
        sweep = _Sweep(model, dtype, env, cases, plans, baseline, out, warmup, repeats)
        jobs = [(text, case, seed) for text in recipes for case in cases for seed in seeds]
        bar = tqdm(total=len(jobs), desc="compare", unit="run", disable=not progress)
        bar.update(sum((t, c.name, s) in done for t, c, s in jobs))
        tasks = [sweep.task(text, todo) for text in recipes
                 if (todo := [(c.name, s) for c in cases for s in seeds if (text, c.name, s) not in done])]
        try:
            outcomes = (config.build(out, env.device).run(tasks) if isolate and tasks
                        else sweep.in_process(tasks, prime, bar))
            sweep.collect(outcomes, bar.update, baseline_done=all(t.recipe != baseline for t in tasks))
            if recheck and any(t.recipe != baseline for t in tasks):
                again = [sweep.task(baseline, [(cases[0].name, seeds[0])], purpose="recheck")]
                sweep.recheck(config.build(out, env.device).run(again) if isolate
                              else sweep.in_process(again, False, bar))
        finally:
            bar.close()
        return Comparison.load(out, model, baseline)


def _checked(model, recipes, cases, seeds, repeats, warmup, dtype, device):
    """compare()'s arguments checked before any work: (cases, recipes, seeds, plans, env)."""
    from .env import torch_dtype
    from .models import check_model
    from .recipes import parse

    check_model(model)  # a missing folder or malformed model_index.json: refused before out exists
    cases = [cases] if isinstance(cases, Case) else list(cases)
    if isinstance(recipes, str):
        raise LabError(f"recipes must be a list of recipe strings, got the string {recipes!r}")
    recipes = list(recipes)
    if not recipes:
        raise LabError("compare needs at least one recipe (the first is the baseline)")
    if not cases:
        raise LabError("compare needs at least one case")
    if not all(isinstance(c, Case) for c in cases):
        raise LabError(f"cases must be lab.Case objects, got {[type(c).__name__ for c in cases]}")
    positive_int("repeats", repeats)
    positive_int("warmup", warmup, minimum=0)
    seeds = [check_seed(s) for s in (seeds if isinstance(seeds, (list, tuple, range)) else [seeds])]
    if not seeds:
        raise LabError("compare needs at least one seed")
    if not all(isinstance(r, str) for r in recipes):
        raise LabError(f"recipes must be recipe strings, got {recipes!r}")
    # One key per (recipe, case, seed): a repeat would run and record twice. A repeated recipe or seed is the
    # same run, so it is dropped (notebooks build lists like [BASELINE, CHOSEN] where CHOSEN may be the
    # baseline); two different cases under one name cannot be told apart, so they are refused.
    for kind, values in (("recipe", recipes), ("seed", seeds)):
        if len(set(values)) < len(values):
            twice = sorted({str(v) for v in values if values.count(v) > 1})
            warnings.warn(f"{kind}s given more than once are measured once: {twice}", stacklevel=3)
    recipes, seeds = list(dict.fromkeys(recipes)), list(dict.fromkeys(seeds))
    names = [c.name for c in cases]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise LabError(f"case name {', '.join(repr(r) for r in repeated)} is given more than once; "
                       "each case needs its own name")
    plans = {text: parse(text) for text in recipes}  # every name and combination checked before any work
    torch_dtype(dtype)
    env = RecipeEnv.detect(device)  # an unavailable device is refused here, before --out exists
    return cases, recipes, seeds, plans, env


def _open_run(out: Path, model: str, baseline: str, recipes: list[str], dtype: str, identity: dict,
              device: str) -> set[tuple]:
    """Check a resume against what ``out`` was made with, record this sweep; the keys already done."""
    from .env import Environment

    path = out / RESULTS
    if path.exists() or path.is_symlink():
        read_file_bytes(path, "results file", RESULTS_LIMIT)  # a FIFO, a device or a dangling link: refused now
    info = _read_meta(out)
    repair_results(path)
    _check_resume(out, info, identity, baseline, path.exists() and path.stat().st_size > 0)
    known = [r for r in (info or {}).get("recipes", []) if isinstance(r, str)]
    meta = {"model": model, "baseline": baseline, "recipes": list(dict.fromkeys(known + recipes)),
            "dtype": dtype, "identity": identity}
    atomic_write_text(out / META, json.dumps(meta, indent=2) + "\n")
    existing = Comparison.load(out, model, baseline)
    atomic_write_text(out / "environment.json", Environment.capture(device).to_json() + "\n")
    return {r.key for r in existing.records if r.status in DONE}


# what a run record takes from a successful benchmark case
_MEASURED = ("latency", "first_call_s", "peak_rss_mb", "rss_before_mb", "peak_cuda_allocated_mb", "cpu_percent",
             "stages", "host", "energy")


@dataclass
class _Sweep:
    """What every run of one compare() shares: one recipe at a time, on a freshly prepared pipeline."""

    model: str
    dtype: str
    env: RecipeEnv
    cases: list[Case]
    plans: dict
    baseline: str
    out: Path
    warmup: int
    repeats: int

    def task(self, text: str, runs: list[tuple[str, int]], purpose: str = "run"):
        """The task measuring recipe ``text`` on the given (case name, seed) runs."""
        from .executors.task import Task

        return Task(model=self.model, recipe=text, baseline=self.baseline, dtype=self.dtype, device=self.env.device,
                    cases=self.cases, runs=runs, warmup=self.warmup, repeats=self.repeats, purpose=purpose)

    def in_process(self, tasks, prime: bool, bar):
        """Measure each task here, one after another (``isolate=False``)."""
        from .executors.task import measure_each

        for i, task in enumerate(tasks):
            bar.set_postfix_str(task.recipe)
            if prime and i == 0:
                name, seed = task.runs[0]
                case = next(c for c in self.cases if c.name == name)
                _prime(self.model, self.plans[self.baseline], case.with_overrides(seed=seed), self.env.device,
                       self.dtype, self.env)
            yield from measure_each(task)
            gc.collect()  # the task's pipeline is gone: free it before the next one loads

    def collect(self, outcomes, tick, baseline_done: bool) -> None:
        """Write each outcome's runs as they come; runs of other recipes wait for the baseline's (their reference)."""
        from .models import ModelUnavailableError

        waiting = []
        for outcome in outcomes:
            if outcome.fatal:
                raise ModelUnavailableError(outcome.fatal)  # the model, not the recipe: nothing in this sweep can run
            if not baseline_done and outcome.recipe != self.baseline:
                waiting.append(outcome)
                continue
            self.finish(outcome, tick)
            if outcome.recipe == self.baseline:
                baseline_done = True
                for held in waiting:
                    self.finish(held, tick)
                waiting = []
        for held in waiting:  # no baseline ran in this sweep (it failed to return): write them anyway
            self.finish(held, tick)

    def _tensors(self, kind: str, recipe: str, name: str, data: bytes) -> tuple[Path, Path]:
        """Write a run's safetensors bytes under ``<out>/<kind>/<recipe>/``: (its path, the baseline's)."""
        from .results import atomic_write_bytes

        path = inside(self.out, kind, slug(recipe), f"{name}.safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        return path, inside(self.out, kind, slug(self.baseline), f"{name}.safetensors")

    def recheck(self, outcomes) -> None:
        """Append the baseline's re-measurement to ``rechecks.jsonl``: no image, no fidelity, not a result."""
        for outcome in outcomes:
            for measured in outcome.runs:
                record = measured.record
                record.recheck, record.model = True, self.model
                if outcome.worker and "pid" in outcome.worker:
                    record.worker = dict(outcome.worker)
                _append(self.out / RECHECKS, record)

    def finish(self, outcome, tick) -> None:
        """The parent's part of a run: its image and update written, SSIM/PSNR/fidelity against the baseline's."""
        from .fidelity import load_update
        from .quality import psnr, ssim
        from .trajectory import load_latents
        from .results import atomic_write_bytes

        for measured in outcome.runs:
            record = measured.record
            if outcome.worker and "pid" in outcome.worker:
                record.worker = dict(outcome.worker)
            record.model = self.model
            # case names come from prompts: a bounded, hashed file stem, and every path checked inside --out
            name = file_stem(f"{record.case}-s{record.seed}")
            if (png := measured.image_bytes()) is not None:
                image = inside(self.out, "images", slug(record.recipe), f"{name}.png")
                image.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(image, png)
                record.image = str(image.relative_to(self.out))
                reference = inside(self.out, "images", slug(self.baseline), f"{name}.png")
                if reference.exists():
                    record.ssim, record.psnr = ssim(image, reference), psnr(image, reference)
            if (latents := measured.trajectory_bytes()) is not None:
                path, reference = self._tensors("trajectory", record.recipe, name, latents)
                if reference.exists():
                    with contextlib.suppress(ValueError):  # another shape (an older baseline's): no trajectory
                        record.trajectory = Trajectory.between(load_latents(path), load_latents(reference))
            if (update := measured.update_bytes()) is not None:
                path, reference = self._tensors("fidelity", record.recipe, name, update)
                if reference.exists():
                    record.fidelity = Fidelity.between(load_update(path), load_update(reference))
                else:
                    record.fidelity_note = "no baseline update to compare with"
            _append(self.out / RESULTS, record)
            tick()
