"""``ResourceMonitor``: CPU, memory and (via NVML) GPU samples from a background thread.

On an NVIDIA GPU each sample also holds board power, temperature, the SM clock against its maximum and the
clock-event (throttle) reasons NVML reports, so a throttled run can be told from a slow one (lab.diagnosis).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import psutil

from .power import nvml_readings
from .results import Record

MB = 1024 * 1024


@dataclass
class ResourceSample(Record):
    t: float  # seconds since the monitor started
    cpu_percent: float  # this process; 100 = one core busy
    rss_mb: float
    system_memory_percent: float
    gpu_memory_mb: float | None = None
    gpu_util_percent: float | None = None
    gpu_power_w: float | None = None
    gpu_temp_c: float | None = None
    sm_clock_mhz: float | None = None
    sm_clock_max_mhz: float | None = None
    throttle_reasons: list[str] | None = None  # NVML clock-event reasons set (lab.power.REASONS), [] when none


def _nvml_handle(index: int):
    """An NVML device handle, or None with no NVIDIA driver / no nvidia-ml-py."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except pynvml.NVMLError:
        return None


class ResourceMonitor:
    """Sample this process's CPU %, RSS, system memory and GPU memory/utilisation every ``interval`` s.

    Use as a context manager (or ``start``/``stop``); ``frame()`` gives the series, ``lab.plots.
    plot_resources(monitor)`` draws it. GPU columns (memory, utilisation, power, temperature, SM clock and
    throttle reasons) need nvidia-ml-py and an NVIDIA driver.
    """

    def __init__(self, interval: float = 0.1, gpu_index: int = 0):
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.interval = interval
        self.gpu_index = gpu_index
        self.samples: list[ResourceSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = None

    def _sample(self, proc: psutil.Process, t0: float) -> ResourceSample:
        gpu_mem = gpu_util = None
        gpu: dict = {}
        if self._nvml is not None:
            import pynvml

            gpu_mem = pynvml.nvmlDeviceGetMemoryInfo(self._nvml).used / MB
            gpu_util = float(pynvml.nvmlDeviceGetUtilizationRates(self._nvml).gpu)
            gpu = nvml_readings(pynvml, self._nvml)
        return ResourceSample(
            t=time.perf_counter() - t0,
            cpu_percent=proc.cpu_percent(interval=None),
            rss_mb=proc.memory_info().rss / MB,
            system_memory_percent=psutil.virtual_memory().percent,
            gpu_memory_mb=gpu_mem,
            gpu_util_percent=gpu_util,
            **gpu,
        )

    def _run(self) -> None:
        proc = psutil.Process()
        proc.cpu_percent(interval=None)  # prime: the first reading covers nothing otherwise
        t0 = time.perf_counter()
        while not self._stop.wait(self.interval):
            self.samples.append(self._sample(proc, t0))

    def start(self) -> "ResourceMonitor":
        if self._thread is not None:
            raise RuntimeError("ResourceMonitor is already running")
        self.samples = []
        self._nvml = _nvml_handle(self.gpu_index)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="lab-resource-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[ResourceSample]:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        return self.samples

    def __enter__(self) -> "ResourceMonitor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def has_gpu(self) -> bool:
        return any(s.gpu_memory_mb is not None for s in self.samples)

    def frame(self):
        """The samples as a DataFrame indexed by time (s)."""
        import pandas as pd

        rows = [s.to_dict() for s in self.samples]
        for row in rows:  # one cell per sample: the reasons as one comma-separated string
            if row.get("throttle_reasons") is not None:
                row["throttle_reasons"] = ",".join(row["throttle_reasons"])
        frame = pd.DataFrame(rows, columns=list(ResourceSample.__dataclass_fields__))
        return frame.set_index("t").dropna(axis=1, how="all")

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        frame = self.frame()
        out = {"samples": float(len(frame)), "mean_cpu_percent": float(frame["cpu_percent"].mean()),
               "peak_rss_mb": float(frame["rss_mb"].max())}
        if "gpu_memory_mb" in frame:
            out["peak_gpu_memory_mb"] = float(frame["gpu_memory_mb"].max())
            out["mean_gpu_util_percent"] = float(frame["gpu_util_percent"].mean())
        for column, key, how in (("gpu_power_w", "mean_gpu_power_w", "mean"), ("gpu_temp_c", "peak_gpu_temp_c", "max"),
                                 ("sm_clock_mhz", "min_sm_clock_mhz", "min")):
            if column in frame:
                out[key] = float(getattr(frame[column], how)())
        return out
