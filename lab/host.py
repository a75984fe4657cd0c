"""What else the host was doing while a figure was measured: other processes' CPU, steal, load, memory, GPU neighbours."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import psutil

from .results import Record

MB = 1024 * 1024
# a measurement is "under contention" when, on average, other processes used more than this share of all cores
# (an idle desktop or a waiting Jupyter server stays under 2 %; a second busy process on 2 cores is 50 %)
OTHER_SHARE_BUSY = 0.10
STEAL_BUSY_PERCENT = 5.0  # the hypervisor gave this much of our CPU time to other guests
SWAP_BUSY_MB = 1.0  # any paging during a timed call distorts it


def _cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole host since boot, over all cores."""
    t = psutil.cpu_times()
    busy = t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return busy, getattr(t, "steal", 0.0)


def _own_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def _swapped_mb() -> float:
    try:
        s = psutil.swap_memory()
    except (OSError, RuntimeError):  # no swap accounting on this platform
        return 0.0
    return (s.sin + s.sout) / MB


def gpu_neighbours(processes, own_pids: set[int]) -> int:
    """How many of NVML's running compute processes (objects with ``.pid``) are not ours."""
    return sum(1 for p in processes if getattr(p, "pid", None) not in own_pids)


def _gpu_processes(index: int | None) -> int | None:
    """Other processes on NVIDIA GPU ``index`` (NVML); None where NVML cannot tell."""
    if index is None:
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except Exception:  # noqa: BLE001 - no driver, no nvidia-ml-py, or a container that hides processes
        return None
    own = {os.getpid(), *(c.pid for c in psutil.Process().children(recursive=True))}
    return gpu_neighbours(procs, own)


@dataclass
class HostLoad(Record):
    """The host during one measured window: CPU others used against ours, steal, load, free memory, paging."""

    seconds: float
    cores: int
    own_cpu_s: float  # this process (and its children)
    other_cpu_s: float  # every other process, from the host's CPU counters minus ours
    steal_percent: float | None = None  # of the host's capacity, taken by the hypervisor for other guests
    load_avg: float | None = None  # 1-minute load average at the end (counts our own threads too)
    available_mb: float | None = None  # lowest free memory seen
    swapped_mb: float = 0.0  # swap-in + swap-out during the window
    gpu_processes: int | None = None  # other processes on the GPU; None where unreadable or no GPU
    thresholds: dict[str, float] = field(default_factory=lambda: {
        "other_share": OTHER_SHARE_BUSY, "steal_percent": STEAL_BUSY_PERCENT, "swapped_mb": SWAP_BUSY_MB})

    @property
    def other_cores(self) -> float:
        """Cores' worth of CPU other processes used, on average over the window."""
        return self.other_cpu_s / self.seconds if self.seconds > 0 else 0.0

    @property
    def other_share(self) -> float:
        """Share of the host's whole CPU capacity other processes used."""
        return self.other_cores / self.cores if self.cores else 0.0

    @property
    def share(self) -> float:
        """Share of the CPU time used on the host during the window that this process got."""
        used = self.own_cpu_s + self.other_cpu_s
        return self.own_cpu_s / used if used > 0 else 1.0

    @property
    def reasons(self) -> list[str]:
        """Why the window counts as contended (empty when the host was quiet)."""
        th = self.thresholds
        out = []
        if self.other_share > th.get("other_share", OTHER_SHARE_BUSY):
            out.append(f"other processes used {self.other_cores:.2f} of {self.cores} cores")
        if self.steal_percent is not None and self.steal_percent > th.get("steal_percent", STEAL_BUSY_PERCENT):
            out.append(f"CPU steal {self.steal_percent:.0f} %")
        if self.swapped_mb > th.get("swapped_mb", SWAP_BUSY_MB):
            out.append(f"{self.swapped_mb:.0f} MB swapped")
        if self.gpu_processes:
            out.append(f"{self.gpu_processes} other process{'es' if self.gpu_processes > 1 else ''} on the GPU")
        return out

    @property
    def busy(self) -> bool:
        return bool(self.reasons)

    def label(self) -> str:
        """One line for a table cell, a plot label or a message: ``quiet`` or ``busy (why)``."""
        return f"busy ({'; '.join(self.reasons)})" if self.busy else "quiet"

    @classmethod
    def combine(cls, loads: list["HostLoad"]) -> "HostLoad | None":
        """Several windows as one: CPU seconds summed, the worst steal, load, memory and GPU neighbours."""
        loads = [h for h in loads if h is not None]
        if not loads:
            return None
        steal = [h.steal_percent for h in loads if h.steal_percent is not None]
        loadavg = [h.load_avg for h in loads if h.load_avg is not None]
        avail = [h.available_mb for h in loads if h.available_mb is not None]
        gpu = [h.gpu_processes for h in loads if h.gpu_processes is not None]
        return cls(seconds=sum(h.seconds for h in loads), cores=max(h.cores for h in loads),
                   own_cpu_s=sum(h.own_cpu_s for h in loads), other_cpu_s=sum(h.other_cpu_s for h in loads),
                   steal_percent=max(steal) if steal else None, load_avg=max(loadavg) if loadavg else None,
                   available_mb=min(avail) if avail else None, swapped_mb=sum(h.swapped_mb for h in loads),
                   gpu_processes=max(gpu) if gpu else None, thresholds=dict(loads[0].thresholds))


class HostWatch:
    """Context manager: the ``HostLoad`` of the window it encloses (``.load`` after exit)."""

    def __init__(self, gpu_index: int | None = None):
        self.gpu_index = gpu_index
        self.load: HostLoad | None = None

    def __enter__(self) -> "HostWatch":
        self._proc = psutil.Process()
        self._t0 = time.perf_counter()
        self._busy0, self._steal0 = _cpu_seconds()
        self._own0 = _own_seconds(self._proc)
        self._swap0 = _swapped_mb()
        self._avail = psutil.virtual_memory().available / MB
        return self

    def __exit__(self, *exc) -> None:
        seconds = time.perf_counter() - self._t0
        busy, steal = _cpu_seconds()
        own = _own_seconds(self._proc)
        cores = psutil.cpu_count() or 1
        own_s = max(own - self._own0, 0.0)
        # the host counters tick at 100 Hz per core: never report less than nothing for the others
        other_s = max((busy - self._busy0) - own_s, 0.0)
        try:
            load_avg = os.getloadavg()[0]
        except OSError:
            load_avg = None
        self.load = HostLoad(
            seconds=seconds, cores=cores, own_cpu_s=own_s, other_cpu_s=other_s,
            steal_percent=100.0 * (steal - self._steal0) / (seconds * cores) if seconds > 0 else None,
            load_avg=load_avg, available_mb=min(self._avail, psutil.virtual_memory().available / MB),
            swapped_mb=max(_swapped_mb() - self._swap0, 0.0), gpu_processes=_gpu_processes(self.gpu_index))


def watch(seconds: float = 1.0, gpu_index: int | None = None) -> HostLoad:
    """The host's load over the next ``seconds`` while this process idles: is it quiet enough to measure?"""
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds!r}")
    with HostWatch(gpu_index) as w:
        time.sleep(seconds)
    return w.load


_SPIN = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


class hog:
    """Context manager: ``processes`` busy-looping CPU hogs (default one per core) for at most ``seconds``.

    What a busy neighbour does to a measurement, on demand: for a lesson, for the contention tests and for
    ``benchmarks/contention.py``. The hogs end on exit, or by themselves after ``seconds`` whatever happens.
    """

    def __init__(self, seconds: float = 60.0, processes: int | None = None):
        if not 0 < seconds <= 3600:
            raise ValueError(f"seconds must be in (0, 3600], got {seconds!r}")
        self.seconds = seconds
        self.processes = processes or psutil.cpu_count() or 1
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes!r}")
        self._procs: list = []

    def __enter__(self) -> "hog":
        import subprocess
        import sys

        code = _SPIN.format(seconds=float(self.seconds))
        self._procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.processes)]
        return self

    def __exit__(self, *exc) -> None:
        for p in self._procs:
            p.terminate()
        for p in self._procs:
            p.wait(timeout=10)
        self._procs = []
