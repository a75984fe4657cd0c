"""The default executor: workers on this machine, one per device slot, each run in a fresh process."""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from .process import LIVE_LOCK, run_worker
from .task import Outcome, Task


class LocalExecutor:
    """Run tasks in spawned workers, at most one per slot at a time; outcomes come back as they finish."""

    name = "local"

    def __init__(self, slots: Sequence[str | None], *, timeout_s: float | None = None,
                 cache_dir: str | None = None, threads: int | None = None) -> None:
        """``slots``: each slot's ``CUDA_VISIBLE_DEVICES`` (None on a CPU machine: the variable is left alone)."""
        self.slots, self.timeout_s, self.cache_dir, self.threads = list(slots), timeout_s, cache_dir, threads

    def run(self, tasks: Sequence[Task]) -> Iterator[Outcome]:
        free: queue.Queue = queue.Queue()
        for slot in self.slots:
            free.put(slot)
        live: set = set()

        def one(task: Task) -> Outcome:
            slot = free.get()
            try:
                return run_worker(task, cuda_visible=slot, cache_dir=self.cache_dir, timeout_s=self.timeout_s,
                                  threads=self.threads, live=live)
            finally:
                free.put(slot)

        with ThreadPoolExecutor(max_workers=len(self.slots), thread_name_prefix="lab-slot") as pool:
            futures = [pool.submit(one, task) for task in tasks]
            try:
                for future in as_completed(futures):
                    yield future.result()
            finally:  # the parent stopped early (an error, Ctrl-C): no task starts and no worker runs on
                for future in futures:
                    future.cancel()
                with LIVE_LOCK:
                    for proc in live:
                        proc.kill()


def local_slots(device: str, workers: int | None) -> list[str | None]:
    """One slot per visible GPU (the first ``workers`` of them) on CUDA; ``workers`` slots (default 1) on CPU."""
    from .._checks import LabError

    if not device.startswith("cuda") or ":" in device:  # a named GPU: the workers share it, as the user asked
        return [None] * (workers or 1)
    import torch

    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else [str(i) for i in range(torch.cuda.device_count())]
    if workers is not None and workers > len(ids):
        raise LabError(f"--workers {workers} is more than the {len(ids)} visible GPU(s) ({','.join(ids)}); "
                       f"pass --workers 1 to {len(ids)}")
    return ids[:workers] if workers else ids
