"""Ray: one task per run (``num_gpus`` each, so Ray hands every run its own GPU), ``max_retries=0``.

A run killed for memory is recorded once instead of being retried. Ray tasks belong to the driver that
submitted them, so a parent that stopped and started again reruns the runs it had not written; their
task ids are kept in ``ray.json`` of the run directory for Ray's own dashboard and logs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..results import atomic_write_text
from .process import run_worker
from .task import Outcome, Task


def _ray_job(task_json: str, timeout_s: float | None, cache_dir: str | None) -> str:
    """What a Ray task runs: the task in a fresh worker process (CUDA_VISIBLE_DEVICES as Ray set it)."""
    return run_worker(Task.from_json(task_json), cache_dir=cache_dir, timeout_s=timeout_s).to_json(indent=None)


class RayExecutor:
    """Submit each task to a Ray cluster (``address``: None joins ``RAY_ADDRESS`` or starts a local one)."""

    name = "ray"

    def __init__(self, folder: str | Path, *, address: str | None = None, gpus_per_run: float = 0,
                 timeout_s: float | None = None, cache_dir: str | None = None) -> None:
        import ray

        if not ray.is_initialized():
            joins = address or os.environ.get("RAY_ADDRESS")  # options of a new local Ray are refused when joining
            ray.init(address=address, log_to_driver=False, **({} if joins else {"include_dashboard": False}))
        self.folder, self.gpus, self.timeout_s, self.cache_dir = Path(folder), gpus_per_run, timeout_s, cache_dir

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        import ray

        remote = ray.remote(_ray_job).options(num_cpus=1, num_gpus=self.gpus, max_retries=0)
        refs = {remote.remote(task.to_json(indent=None), self.timeout_s, self.cache_dir): task for task in tasks}
        self.folder.mkdir(parents=True, exist_ok=True)
        ledger_path = self.folder / "ray.json"
        try:  # every run() of a sweep adds its tasks (the baseline's recheck comes in a second call)
            ledger = json.loads(ledger_path.read_text()) if ledger_path.exists() else {}
        except ValueError:  # a torn ledger is only a record for Ray's dashboard: start it again
            ledger = {}
        ledger.update({task.key: {"task_id": ref.task_id().hex(), "recipe": task.recipe} for ref, task in refs.items()})
        atomic_write_text(ledger_path, json.dumps(ledger, indent=2) + "\n")
        try:
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    task = refs.pop(ref)
                    try:
                        outcome = Outcome.from_json(ray.get(ref))
                    except ray.exceptions.RayError as err:  # the task itself died (its node, its Ray worker)
                        outcome = Outcome.died(task, f"the Ray task failed: {type(err).__name__}: {err}"[:2000])
                    outcome.worker.update(executor=self.name, task_id=ref.task_id().hex())
                    yield outcome
        finally:
            for ref in refs:
                ray.cancel(ref, force=True)
