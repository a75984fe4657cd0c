"""``python -m lab.executors.worker TASK.json OUTCOME.json``: measure one task in this fresh process."""

from __future__ import annotations

import os
import socket
import sys
import time


def main(argv: list[str]) -> int:
    entered = time.time()
    spawned = float(os.environ.get("LAB_SPAWNED_AT", "nan"))
    from .process import watch_parent

    watch_parent()
    import diffusers  # noqa: F401 - imported here so the cost of a worker's imports is measured on its own
    import torch  # noqa: F401

    from ..results import atomic_write_text
    from .task import Task, measure

    imported = time.time()
    task_path, outcome_path = argv
    with open(task_path, encoding="utf-8") as f:
        task = Task.from_json(f.read())
    from ..recipes.threads import set_threads, threads_of
    from ..threads import cpu_cores

    # inter-op threads can be set only before any parallel work; a count over the cores is refused later, by check
    if (n := threads_of(task.recipe)) is not None and n <= cpu_cores():
        set_threads(n)
    outcome = measure(task)
    outcome.worker.update(pid=os.getpid(), host=socket.gethostname(),
                          cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                          inductor_cache=os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
                          triton_cache=os.environ.get("TRITON_CACHE_DIR"),
                          start_s=entered - spawned, imports_s=imported - entered, measure_s=time.time() - imported)
    atomic_write_text(outcome_path, outcome.to_json(indent=None))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
