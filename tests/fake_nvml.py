"""A stand-in for the ``pynvml`` module that replays NVML replies from tests/data/nvml_h100_samples.json."""

from __future__ import annotations

import json
import types
from pathlib import Path

SAMPLES = Path(__file__).parent / "data" / "nvml_h100_samples.json"


def load() -> dict:
    return json.loads(SAMPLES.read_text())


def module(run: str = "steady") -> types.ModuleType:
    """A fake ``pynvml``: every ``nvmlDeviceGetMemoryInfo`` call (one per monitor sample) moves to the next
    sample of ``run``; each energy reading moves along ``energy_mj``."""
    data = load()
    samples, energy = data["runs"][run], list(data["energy_mj"])
    state = {"sample": -1, "energy": -1}
    nvml = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def now() -> dict:
        return samples[min(max(state["sample"], 0), len(samples) - 1)]

    def memory(handle):
        state["sample"] += 1
        return types.SimpleNamespace(used=now()["memory_used_mb"] * 2**20)

    def total_energy(handle):
        state["energy"] = min(state["energy"] + 1, len(energy) - 1)
        return energy[state["energy"]]

    def clock(handle, kind):
        assert kind == nvml.NVML_CLOCK_SM
        return now()["sm_clock_mhz"]

    nvml.NVMLError, nvml.NVML_CLOCK_SM, nvml.NVML_TEMPERATURE_GPU = NVMLError, 1, 0
    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetHandleByIndex = lambda index: f"gpu{index}"
    nvml.nvmlDeviceGetHandleByUUID = lambda uuid: "gpu0"
    nvml.nvmlDeviceGetName = lambda handle: data["name"]
    nvml.nvmlDeviceGetMemoryInfo = memory
    nvml.nvmlDeviceGetUtilizationRates = lambda handle: types.SimpleNamespace(gpu=now()["util"])
    nvml.nvmlDeviceGetTotalEnergyConsumption = total_energy
    nvml.nvmlDeviceGetPowerUsage = lambda handle: now()["power_mw"]
    nvml.nvmlDeviceGetTemperature = lambda handle, sensor: now()["temp_c"]
    nvml.nvmlDeviceGetClockInfo = clock
    nvml.nvmlDeviceGetMaxClockInfo = lambda handle, kind: data["sm_clock_max_mhz"]
    nvml.nvmlDeviceGetCurrentClocksEventReasons = lambda handle: now()["reasons"]
    return nvml
