"""One task in a freshly spawned Python process: its own cache folders, device slot, thread count and timeout."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .task import Outcome, Task

# enough of a dying worker's stderr to show its traceback or the last thing it printed
STDERR_TAIL = 2000
LIVE_LOCK = threading.Lock()  # guards the sets of running workers that executors kill when they stop early
_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding the lab package, for the child's sys.path


def run_worker(task: Task, *, cuda_visible: str | None = None, cache_dir: str | os.PathLike | None = None,
               timeout_s: float | None = None, threads: int | None = None, live: set | None = None) -> Outcome:
    """Run ``task`` in a new ``python -m lab.executors.worker`` process and return what it measured.

    A worker that dies (a signal such as SIGKILL from the OOM killer, a segfault, a non-zero exit, the
    timeout) gives an ``Outcome`` whose records say so with the tail of its stderr: it never raises.

    Args:
        cuda_visible: the worker's ``CUDA_VISIBLE_DEVICES`` (None: inherited, as SLURM or Ray set it).
        cache_dir: one inductor/Triton cache shared by every worker that names it (warm); None gives this
            worker an empty one of its own (cold, so first-call times include compilation).
        threads: CPU threads of the worker (``OMP_NUM_THREADS``), so parallel CPU workers do not oversubscribe.
        live: the parent's set of running worker processes (to kill them when it stops early).
    """
    tmp = Path(tempfile.mkdtemp(prefix="lab-worker-"))
    try:
        caches = Path(cache_dir) if cache_dir is not None else tmp / "cache"
        env = dict(os.environ)
        env.update(TORCHINDUCTOR_CACHE_DIR=str(caches / "inductor"), TRITON_CACHE_DIR=str(caches / "triton"),
                   LAB_SPAWNED_AT=repr(time.time()),
                   PYTHONPATH=os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p))
        if cuda_visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = cuda_visible
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        task_path, outcome_path, stderr_path = tmp / "task.json", tmp / "outcome.json", tmp / "stderr.txt"
        task_path.write_text(task.to_json(indent=None), encoding="utf-8")
        start = time.perf_counter()
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "lab.executors.worker", str(task_path), str(outcome_path)],
                                    stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, env=env)
            _track(live, proc, add=True)
            try:
                code, why = proc.wait(timeout=timeout_s), None
            except subprocess.TimeoutExpired:
                proc.kill()
                code, why = proc.wait(), f"the worker ran past its {timeout_s:g} s timeout and was killed"
            finally:
                _track(live, proc, add=False)
        wall = time.perf_counter() - start
        if code == 0 and why is None and outcome_path.exists():
            outcome = Outcome.from_json(outcome_path.read_text(encoding="utf-8"))
        else:
            outcome = Outcome.died(task, _death(code, why, stderr_path))
            outcome.worker = {"pid": proc.pid, "host": socket.gethostname()}
        outcome.worker.update(wall_s=wall, exit_code=code)
        return outcome
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _track(live: set | None, proc, add: bool) -> None:
    if live is not None:
        with LIVE_LOCK:
            (live.add if add else live.discard)(proc)


def _death(code: int, why: str | None, stderr_path: Path) -> str:
    """One line saying how the worker ended, then the tail of its stderr."""
    if why is None:
        if code < 0:
            name = signal.Signals(-code).name
            why = f"the worker was killed by {name}" + (" (the OOM killer, or a kill -9)" if name == "SIGKILL" else "")
        elif code == 0:
            why = "the worker exited without writing its results"
        else:
            why = f"the worker exited with status {code}"
    tail = stderr_path.read_bytes()[-STDERR_TAIL:].decode("utf-8", errors="replace").strip()
    return why + (f"; stderr: ...{tail}" if tail else "; no stderr")


def watch_parent(interval_s: float = 1.0) -> None:
    """End this process when its parent does: a killed sweep leaves no worker running on."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True, name="lab-watch-parent").start()
