import mmap
import sys
import time

import psutil
import pytest

from lab import plots
from lab.monitor import ResourceMonitor

from . import fake_nvml


def test_monitor_samples_at_its_interval():
    import torch

    a = torch.randn(512, 512)
    start = time.perf_counter()
    with ResourceMonitor(interval=0.02) as monitor:
        time.sleep(0.1)
        before = psutil.Process().memory_info().rss / 2**20
        data = mmap.mmap(-1, 128 * 1024 * 1024)  # fresh pages (a heap reuse would not grow RSS)
        data.write(b"\x01" * len(data))  # touched: now resident
        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:  # torch releases the GIL inside ops, as a pipeline does
            torch.mm(a, a)
    elapsed = time.perf_counter() - start
    frame = monitor.frame()
    # a slower host takes longer, so the count is bounded by the elapsed time, not by a fixed number
    assert 3 <= len(frame) <= elapsed / monitor.interval + 1
    assert frame.index.to_series().diff().dropna().min() >= 0.5 * monitor.interval
    assert {"cpu_percent", "rss_mb", "system_memory_percent"} <= set(frame.columns)
    assert frame["rss_mb"].max() - before > 100 and frame["cpu_percent"].max() > 50
    assert monitor.summary()["peak_rss_mb"] == frame["rss_mb"].max()
    data.close()


def test_monitor_plot_and_errors():
    monitor = ResourceMonitor(interval=0.01)
    with monitor:
        time.sleep(0.1)
    fig = plots.plot_resources(monitor)
    assert fig.axes[0].get_ylabel().startswith("CPU") and fig.axes[1].get_ylabel() == "RSS (MB)"
    with pytest.raises(ValueError, match="interval"):
        ResourceMonitor(interval=0)
    monitor.start()
    with pytest.raises(RuntimeError, match="already running"):
        monitor.start()
    monitor.stop()


def test_monitor_attaches_to_benchmark(tiny_pipe):
    import lab

    res = lab.benchmark(tiny_pipe, lab.Case("x", steps=2), repeats=2, progress=False,
                        monitor=ResourceMonitor(interval=0.01))
    assert res.resources and res.resources[-1].t > 0
    assert type(res).from_json(res.to_json()) == res


def test_monitor_samples_power_clock_and_throttle_reasons_from_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml.module("throttled"))
    recorded = fake_nvml.load()["runs"]["throttled"]
    with ResourceMonitor(interval=0.005) as monitor:
        deadline = time.perf_counter() + 30
        while len(monitor.samples) < len(recorded) and time.perf_counter() < deadline:
            time.sleep(0.01)
    first, third = monitor.samples[0], monitor.samples[2]
    assert first.gpu_power_w == recorded[0]["power_mw"] / 1e3 and first.gpu_temp_c == recorded[0]["temp_c"]
    assert first.sm_clock_mhz == 1980 and first.sm_clock_max_mhz == 1980 and first.throttle_reasons == []
    assert third.sm_clock_mhz == recorded[2]["sm_clock_mhz"]
    assert third.throttle_reasons == ["sw_power_cap", "sw_thermal"]
    frame = monitor.frame()
    assert frame["throttle_reasons"].iloc[2] == "sw_power_cap,sw_thermal"
    summary = monitor.summary()
    assert summary["peak_gpu_temp_c"] == 89 and summary["min_sm_clock_mhz"] == 1410
    assert type(third).from_json(third.to_json()) == third


def test_resource_plot_shows_power_and_clock_when_sampled(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml.module("throttled"))
    with ResourceMonitor(interval=0.005) as monitor:
        deadline = time.perf_counter() + 30
        while len(monitor.samples) < 3 and time.perf_counter() < deadline:
            time.sleep(0.01)
    fig = plots.plot_resources(monitor)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert "power (W)" in labels and "SM clock (MHz)" in labels and "GPU memory (MB)" in labels
