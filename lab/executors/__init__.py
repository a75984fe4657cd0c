"""Where a sweep's runs execute: each in a fresh worker process, on this machine, a SLURM cluster or Ray.

``ExecutorConfig`` says which executor and with what options; ``check()`` refuses bad options before
anything runs, ``build()`` makes the executor. Every executor has ``run(tasks)``, yielding one
``Outcome`` per ``Task`` as it finishes; the parent alone writes ``results.jsonl``.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from .._checks import LabError, choose, positive_int
from ..results import Record

EXECUTORS = ("local", "submitit", "ray")
EXTRAS = {"submitit": "slurm", "ray": "ray"}
JOBS = ".jobs"  # under the run directory: the ledgers of submitted jobs


def isolate_default() -> bool:
    """Runs are isolated unless ``LAB_ISOLATE=0`` (the test suite sets it for tests that are not about isolation)."""
    return os.environ.get("LAB_ISOLATE", "1").strip().lower() not in ("0", "false", "no")


@dataclass
class ExecutorConfig(Record):
    """Which executor runs a sweep's workers, and its options (``lab compare --executor ...``)."""

    name: str = "local"
    workers: int | None = None  # local: parallel workers (default one per visible GPU; one on CPU)
    devices: list[str] | None = None  # local: each slot's CUDA_VISIBLE_DEVICES, instead of the visible GPUs
    timeout_s: float | None = None  # a run still going after this is killed and recorded as an error
    warm_cache: str | None = None  # one inductor/Triton cache shared by all workers (default: a cold one each)
    slurm_partition: str | None = None
    slurm_gpus: int | None = None  # GPUs per job (default 1 when the sweep's device is CUDA)
    slurm_time: int | None = None  # minutes per job
    slurm_cluster: str | None = None  # submitit's cluster: None picks SLURM when present; "local" runs jobs here
    ray_address: str | None = None  # None: RAY_ADDRESS, or a local Ray
    ray_gpus: float | None = None  # GPUs per Ray task (default 1 on CUDA, 0 on CPU)

    def check(self) -> ExecutorConfig:
        """Refuse an unknown executor, a bad number, an option of another executor or a missing extra."""
        choose("executor", self.name, EXECUTORS)
        if self.workers is not None:
            positive_int("--workers", self.workers)
        if self.slurm_gpus is not None:
            positive_int("--slurm-gpus", self.slurm_gpus, minimum=0)
        if self.slurm_time is not None:
            positive_int("--slurm-time", self.slurm_time)
        if self.timeout_s is not None and not (isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0):
            raise LabError(f"timeout must be a positive number of seconds, got {self.timeout_s!r}")
        if self.devices is not None and not self.devices:
            raise LabError("devices must name at least one CUDA_VISIBLE_DEVICES slot")
        slurm = [f"--slurm-{n}" for n in ("partition", "gpus", "time") if getattr(self, f"slurm_{n}") is not None]
        wrong = {"submitit": (["--workers"] if self.workers is not None else []),
                 "ray": slurm + (["--workers"] if self.workers is not None else []),
                 "local": slurm}[self.name]
        if self.name in EXTRAS and importlib.util.find_spec(self.name) is None:
            raise LabError(f"--executor {self.name} needs {self.name}, which is not installed: "
                           f"pip install 'diffusion-lab[{EXTRAS[self.name]}]'")
        if self.name == "local" and slurm and importlib.util.find_spec("submitit") is None:
            raise LabError(f"{', '.join(slurm)} need --executor submitit and submitit, which is not installed: "
                           "pip install 'diffusion-lab[slurm]'")
        if wrong:
            hint = "--executor submitit" if wrong[0].startswith("--slurm") else "--executor local"
            raise LabError(f"{', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} not an option of "
                           f"--executor {self.name}; they go with {hint}")
        return self

    def build(self, out: Path, device: str):
        """The executor, its ledgers under ``<out>/.jobs`` (run ``check()`` first)."""
        cache = str(Path(self.warm_cache).resolve()) if self.warm_cache else None
        if self.name == "submitit":
            from .slurm import SubmititExecutor

            return SubmititExecutor(out / JOBS / "submitit", cluster=self.slurm_cluster,
                                    partition=self.slurm_partition, time_min=self.slurm_time,
                                    gpus=self.slurm_gpus if self.slurm_gpus is not None
                                    else (1 if device.startswith("cuda") else None),
                                    timeout_s=self.timeout_s, cache_dir=cache)
        if self.name == "ray":
            from .ray_cluster import RayExecutor

            gpus = self.ray_gpus if self.ray_gpus is not None else (1 if device.startswith("cuda") else 0)
            return RayExecutor(out / JOBS / "ray", address=self.ray_address, gpus_per_run=gpus,
                               timeout_s=self.timeout_s, cache_dir=cache)
        from .local import LocalExecutor, local_slots

        slots = list(self.devices) if self.devices else local_slots(device, self.workers)
        # CPU workers side by side split the cores instead of each taking them all
        threads = max(1, (os.cpu_count() or 1) // len(slots)) if len(slots) > 1 and not device.startswith("cuda") \
            else None
        return LocalExecutor(slots, timeout_s=self.timeout_s, cache_dir=cache, threads=threads)


def executor_config(executor: str | ExecutorConfig) -> ExecutorConfig:
    """An ``ExecutorConfig`` from a name or a config, checked."""
    if isinstance(executor, ExecutorConfig):
        return executor.check()
    if not isinstance(executor, str):
        raise LabError(f"executor must be one of {', '.join(EXECUTORS)} or an ExecutorConfig, got {executor!r}")
    return ExecutorConfig(name=executor).check()


__all__ = ["EXECUTORS", "ExecutorConfig", "executor_config", "isolate_default"]
