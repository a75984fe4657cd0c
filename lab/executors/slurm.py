"""SLURM through submitit: the sweep's tasks as one job array; job ids kept so a restarted parent collects them.

Each job runs ``run_worker`` (a fresh process with cold caches) and writes its ``Outcome`` JSON next to the
ledger; the parent reads that JSON, never submitit's pickled return value.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..results import atomic_write_text
from .process import run_worker
from .task import Outcome, Task

LEDGER = "jobs.json"  # {task key: {"job_id": ..., "collected": bool}}
POLL_S = 1.0


def _job(task_json: str, outcome_path: str, timeout_s: float | None, cache_dir: str | None) -> None:
    """What a SLURM job runs: the task in a fresh worker (CUDA_VISIBLE_DEVICES as SLURM set it)."""
    outcome = run_worker(Task.from_json(task_json), cache_dir=cache_dir, timeout_s=timeout_s)
    atomic_write_text(outcome_path, outcome.to_json(indent=None))


class SubmititExecutor:
    """Submit each task as a job of one array (``cluster``: None picks SLURM when it is there, ``"local"`` tests)."""

    name = "submitit"

    def __init__(self, folder: str | Path, *, cluster: str | None = None, partition: str | None = None,
                 gpus: int | None = None, time_min: int | None = None, timeout_s: float | None = None,
                 cache_dir: str | None = None) -> None:
        import submitit

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.timeout_s, self.cache_dir = timeout_s, cache_dir
        self.executor = submitit.AutoExecutor(folder=self.folder / "logs", cluster=cluster)
        params: dict = {"name": "lab-compare", "nodes": 1, "tasks_per_node": 1}
        if time_min is not None:
            params["timeout_min"] = time_min
        if gpus is not None:
            params["gpus_per_node"] = gpus
        if partition is not None:
            params["slurm_partition"] = partition
        self.executor.update_parameters(**params)

    def _outcome_path(self, task: Task) -> Path:
        return self.folder / "outcomes" / f"{task.key}.json"

    def _ledger(self) -> dict:
        path = self.folder / LEDGER
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, ledger: dict) -> None:
        atomic_write_text(self.folder / LEDGER, json.dumps(ledger, indent=2) + "\n")

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        (self.folder / "outcomes").mkdir(parents=True, exist_ok=True)
        ledger = self._ledger()
        jobs, fresh = {}, []
        for task in tasks:
            entry = ledger.get(task.key)
            if entry and not entry.get("collected"):  # submitted by a parent that stopped: collect, not rerun
                jobs[task.key] = (task, self.executor._executor.job_class(self.executor.folder, entry["job_id"]))
            else:
                fresh.append(task)
        if fresh:
            for task in fresh:
                self._outcome_path(task).unlink(missing_ok=True)  # an earlier try's outcome of a run being retried
            with self.executor.batch():
                submitted = [(task, self.executor.submit(_job, task.to_json(indent=None), str(self._outcome_path(task)),
                                                         self.timeout_s, self.cache_dir)) for task in fresh]
            for task, job in submitted:
                jobs[task.key] = (task, job)
                ledger[task.key] = {"job_id": str(job.job_id), "recipe": task.recipe, "collected": False}
            self._save(ledger)
        try:
            while jobs:
                finished = [key for key, (task, job) in jobs.items() if self._finished(task, job)]
                if not finished:
                    time.sleep(POLL_S)
                    continue
                for key in finished:
                    task, job = jobs.pop(key)
                    outcome = self._collect(task, job)
                    yield outcome
                    ledger[key]["collected"] = True  # the parent has written it: a restart must not collect it again
                    self._save(ledger)
        finally:
            for _, job in jobs.values():
                if getattr(job, "_process", None) is not None:  # a local job this parent started: stop it
                    job.cancel(check=False)

    def _finished(self, task: Task, job) -> bool:
        if self._outcome_path(task).exists():
            return True
        if getattr(job, "_process", True) is None:  # a local job started by an earlier parent: alive by its pid
            import psutil

            return not psutil.pid_exists(int(job.job_id))
        return job.done()

    def _collect(self, task: Task, job) -> Outcome:
        path = self._outcome_path(task)
        if path.exists():
            outcome = Outcome.from_json(path.read_text(encoding="utf-8"))
        else:
            stderr = (job.stderr() or "").strip()[-2000:]
            outcome = Outcome.died(task, f"the submitit job {job.job_id} ended ({job.state}) without results; "
                                         f"stderr: ...{stderr}" if stderr else f"the submitit job {job.job_id} "
                                         f"ended ({job.state}) without results")
        outcome.worker.update(executor=self.name, job_id=str(job.job_id))
        return outcome
