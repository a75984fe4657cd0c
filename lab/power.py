"""Energy and power: NVML's total-energy counter on NVIDIA GPUs, RAPL's counters on CPUs that expose them.

Both are cumulative hardware counters read before and after each measured call, so the energy of a run is a
difference of two readings, never an estimate. Where neither can be read (a VM without ``/sys/class/powercap``,
counters readable by root only, no NVIDIA driver) the result says why and carries no figure.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .results import Record

POWERCAP = "/sys/class/powercap"
# NVML clock-event (throttle) reason bits (nvml.h, nvmlClocksEventReason*): the ones that lower the SM clock
# because of power or heat, as opposed to an idle GPU or a clock the user set
POWER_REASONS = {0x4: "sw_power_cap", 0x80: "hw_power_brake"}
THERMAL_REASONS = {0x20: "sw_thermal", 0x40: "hw_thermal"}
OTHER_REASONS = {0x1: "gpu_idle", 0x2: "applications_clocks", 0x8: "hw_slowdown", 0x10: "sync_boost",
                 0x100: "display_clock"}
REASONS = {**POWER_REASONS, **THERMAL_REASONS, **OTHER_REASONS}


@dataclass
class Energy(Record):
    """Energy of the measured calls of one run: joules per image and mean watts, or why they cannot be read."""

    joules_per_image: float | None
    mean_watts: float | None
    source: str | None  # nvml | rapl; None when unreadable
    joules: float | None = None  # over every measured call
    seconds: float | None = None  # the measured calls' wall time the joules cover
    images: int = 0
    domains: list[str] = field(default_factory=list)  # what the counter covers (a GPU, CPU packages)
    note: str | None = None  # why there is no figure, or what the figure includes besides this run

    @classmethod
    def unreadable(cls, note: str) -> "Energy":
        return cls(joules_per_image=None, mean_watts=None, source=None, note=note)

    @property
    def readable(self) -> bool:
        return self.joules_per_image is not None


def decode_reasons(mask: int) -> list[str]:
    """NVML's clock-event bitmask as reason names (unknown bits as hex)."""
    names = [name for bit, name in REASONS.items() if mask & bit]
    rest = mask & ~sum(REASONS)
    return names + ([hex(rest)] if rest else [])


class NvmlCounter:
    """NVML's total energy since the driver loaded (``nvmlDeviceGetTotalEnergyConsumption``, mJ), in joules."""

    source = "nvml"
    note = "the whole GPU board (idle power and any other process on it included)"

    def __init__(self, nvml, handle, name: str):
        self.nvml, self.handle, self.domains = nvml, handle, [name]

    def read(self) -> float:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1e3


class RaplCounter:
    """The sum of the CPU packages' RAPL energy counters (``energy_uj``), unwrapped at ``max_energy_range_uj``.

    Each zone's counter wraps to 0 after ``max_energy_range_uj``; a reading below the previous one adds the
    range. Reading at least once per wrap period (minutes at full load) is enough, and lab reads per call.
    """

    source = "rapl"
    note = "the whole CPU package (every process on it, idle power included), not this run alone"

    def __init__(self, zones: list[Path]):
        self.zones = zones
        self.domains = [_zone_name(z) for z in zones]
        self.ranges = [int((z / "max_energy_range_uj").read_text()) for z in zones]
        self.last = [self._raw(z) for z in zones]
        self.total_uj = 0

    @staticmethod
    def _raw(zone: Path) -> int:
        return int((zone / "energy_uj").read_text())

    def read(self) -> float:
        for i, zone in enumerate(self.zones):
            raw = self._raw(zone)
            delta = raw - self.last[i]
            if delta < 0:  # wrapped past max_energy_range_uj since the last reading
                delta += self.ranges[i]
            self.total_uj += delta
            self.last[i] = raw
        return self.total_uj / 1e6


def _zone_name(zone: Path) -> str:
    try:
        return f"{zone.name} ({(zone / 'name').read_text().strip()})"
    except OSError:
        return zone.name


def rapl_zones(root: str | os.PathLike | None = None) -> list[Path]:
    """The top-level (package) RAPL zones under ``root``: ``intel-rapl:N``, never their sub-zones (core, dram),
    which the package already counts, nor the MMIO copy of package 0."""
    root = Path(root or POWERCAP)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("intel-rapl:") and p.name.count(":") == 1)


def rapl_counter(root: str | os.PathLike | None = None) -> tuple[RaplCounter | None, str | None]:
    """A RAPL counter over every CPU package, or None and why it cannot be read here."""
    root = root or POWERCAP
    zones = rapl_zones(root)
    if not zones:
        why = (f"{root} does not exist" if not Path(root).exists() else f"{root} has no intel-rapl zone")
        return None, (f"no RAPL energy counter: {why} (a VM, a container without it, or a CPU/kernel "
                      "without the powercap driver)")
    try:
        return RaplCounter(zones), None
    except PermissionError:
        return None, (f"RAPL counters under {root} are readable by root only (Linux restricts energy_uj since "
                      f"CVE-2020-8694): `sudo chmod a+r {root}/intel-rapl:*/energy_uj` to measure")
    except (OSError, ValueError) as err:
        return None, f"RAPL counters under {root} could not be read ({type(err).__name__}: {err})"


def nvml_device(index: int = 0, uuid: str | None = None):
    """``(pynvml, handle)`` of a GPU (by UUID when known: NVML numbers GPUs ignoring CUDA_VISIBLE_DEVICES),
    or ``(None, why)``."""
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py is not installed (pip install 'diffusion-lab[gpu]')"
    try:
        pynvml.nvmlInit()
        handle = (pynvml.nvmlDeviceGetHandleByUUID(uuid) if uuid
                  else pynvml.nvmlDeviceGetHandleByIndex(index))
        return pynvml, handle
    except pynvml.NVMLError as err:
        return None, f"NVML is not available ({err})"


def nvml_counter(device: str) -> tuple[NvmlCounter | None, str | None]:
    """NVML's energy counter of the CUDA ``device``, or None and why."""
    index = int(device.split(":")[1]) if ":" in device else 0
    uuid = None
    try:
        import torch

        uuid = str(torch.cuda.get_device_properties(index).uuid)
        uuid = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
    except Exception:  # noqa: BLE001 - an older torch without .uuid: fall back to NVML's own numbering
        uuid = None
    nvml, handle = nvml_device(index, uuid)
    if nvml is None:
        return None, handle
    try:
        name = nvml.nvmlDeviceGetName(handle)
        counter = NvmlCounter(nvml, handle, name.decode() if isinstance(name, bytes) else str(name))
        counter.read()
        return counter, None
    except nvml.NVMLError as err:  # pre-Volta GPUs have no total-energy counter
        return None, f"NVML cannot read this GPU's total energy counter ({err}; it needs Volta or newer)"


def energy_counter(device: str, rapl_root: str | os.PathLike | None = None):
    """The counter covering where ``device``'s work runs (NVML for CUDA, RAPL for the CPU), or None and why."""
    if device.startswith("cuda"):
        return nvml_counter(device)
    if device.startswith("cpu"):
        return rapl_counter(rapl_root)
    return None, f"no energy counter for device {device!r} (lab reads NVML on CUDA and RAPL on the CPU)"


class EnergyMeter:
    """Accumulates the counter's difference over each measured call (``start``/``stop`` around it)."""

    def __init__(self, device: str, counter=None, why: str | None = None):
        if counter is None and why is None:
            counter, why = energy_counter(device)
        self.counter, self.why = counter, why
        self.reset()

    def reset(self) -> None:
        self.joules = self.seconds = 0.0
        self.images = 0
        self._start: tuple[float, float] | None = None

    def start(self) -> None:
        if self.counter is not None:
            self._start = (self.counter.read(), time.perf_counter())

    def stop(self, images: int) -> None:
        if self.counter is not None and self._start is not None:
            now = time.perf_counter()
            self.joules += self.counter.read() - self._start[0]
            self.seconds += now - self._start[1]
            self.images += images
            self._start = None

    def result(self) -> Energy:
        """What the measured calls since ``reset`` drew, or why it cannot be said."""
        if self.counter is None:
            return Energy.unreadable(self.why or "no energy counter")
        if not self.images or self.seconds <= 0:
            return Energy.unreadable("no measured call")
        return Energy(joules_per_image=self.joules / self.images, mean_watts=self.joules / self.seconds,
                      source=self.counter.source, joules=self.joules, seconds=self.seconds, images=self.images,
                      domains=list(self.counter.domains), note=self.counter.note)


def nvml_readings(nvml, handle) -> dict:
    """Power (W), temperature (°C), SM clock and its maximum (MHz) and clock-event reasons of one GPU now;
    a reading the GPU does not support is None."""
    def read(fn, *args):
        try:
            return fn(handle, *args)
        except nvml.NVMLError:
            return None

    power = read(nvml.nvmlDeviceGetPowerUsage)  # mW
    reasons_fn = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) \
        or nvml.nvmlDeviceGetCurrentClocksThrottleReasons
    mask = read(reasons_fn)
    return {"gpu_power_w": power / 1e3 if power is not None else None,
            "gpu_temp_c": read(nvml.nvmlDeviceGetTemperature, nvml.NVML_TEMPERATURE_GPU),
            "sm_clock_mhz": read(nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_SM),
            "sm_clock_max_mhz": read(nvml.nvmlDeviceGetMaxClockInfo, nvml.NVML_CLOCK_SM),
            "throttle_reasons": decode_reasons(mask) if mask is not None else None}


def summary(bench) -> str:
    """Markdown: energy per image and mean power per case of a ``BenchmarkResult``, or why they are unreadable."""
    import pandas as pd

    rows = [{"case": c.case.name, "source": c.energy.source, "J/image": c.energy.joules_per_image,
             "mean W": c.energy.mean_watts, "images": c.energy.images}
            for c in bench.cases if c.energy is not None and c.energy.readable]
    notes = sorted({c.energy.note for c in bench.cases if c.energy is not None and c.energy.note})
    if not rows:
        why = "; ".join(notes) or "the benchmark recorded no energy"
        return f"**Energy per image: not measured on {bench.device}.** {why}. No figure is given rather than a guess."
    text = pd.DataFrame(rows).set_index("case").round(3).to_markdown()
    return text + ("\n\nCovers " + "; ".join(notes) + "." if notes else "")
