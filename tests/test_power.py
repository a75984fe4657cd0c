import json
import sys

import pytest

import lab
from lab import power
from lab.power import Energy, EnergyMeter, NvmlCounter, decode_reasons, rapl_counter, rapl_zones

from . import fake_nvml


def _zone(root, name, label, uj, max_uj):
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "name").write_text(label + "\n")
    (zone / "energy_uj").write_text(f"{uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return zone


@pytest.fixture
def powercap(tmp_path):
    """Two packages, a core sub-zone and the MMIO copy of package 0, as Linux lays them out."""
    root = tmp_path / "powercap"
    p0 = _zone(root, "intel-rapl:0", "package-0", 262_000_000_000, 262_143_328_850)
    _zone(root, "intel-rapl:1", "package-1", 5_000_000, 262_143_328_850)
    _zone(root, "intel-rapl:0:0", "core", 1_000_000, 262_143_328_850)  # counted inside package-0 already
    _zone(root, "intel-rapl-mmio:0", "package-0", 262_000_000_000, 262_143_328_850)
    return root, p0


def test_rapl_sums_packages_and_unwraps(powercap):
    root, p0 = powercap
    assert [z.name for z in rapl_zones(root)] == ["intel-rapl:0", "intel-rapl:1"]
    counter, why = rapl_counter(root)
    assert why is None and counter.domains == ["intel-rapl:0 (package-0)", "intel-rapl:1 (package-1)"]
    assert counter.read() == 0.0
    # package 0 wraps: 262 000 J -> past its 262 143.33 J range -> 57 J; package 1 draws 20 J
    (p0 / "energy_uj").write_text("57000000\n")
    (root / "intel-rapl:1" / "energy_uj").write_text("25000000\n")
    expected = (262_143_328_850 - 262_000_000_000 + 57_000_000 + 20_000_000) / 1e6
    assert counter.read() == pytest.approx(expected)
    (p0 / "energy_uj").write_text("58000000\n")  # no wrap: +1 J
    assert counter.read() == pytest.approx(expected + 1.0)


def test_rapl_unreadable_says_why(tmp_path, powercap, monkeypatch):
    counter, why = rapl_counter(tmp_path / "absent")
    assert counter is None and "does not exist" in why and "RAPL" in why
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no intel-rapl zone" in rapl_counter(empty)[1]
    root, p0 = powercap

    def denied(zones):  # what a non-root user meets on Linux >= 5.10 (energy_uj mode 0400)
        raise PermissionError(13, "Permission denied", str(p0 / "energy_uj"))

    monkeypatch.setattr(power, "RaplCounter", denied)
    counter, why = rapl_counter(root)
    assert counter is None and "root only" in why and "chmod" in why


def test_energy_on_this_machine_is_read_or_stated():
    counter, why = power.energy_counter("cpu")
    meter = EnergyMeter("cpu")
    meter.start()
    meter.stop(images=1)
    energy = meter.result()
    if counter is None:  # this VM exposes no /sys/class/powercap: no figure, and the note says why
        assert energy.source is None and energy.joules_per_image is None and energy.mean_watts is None
        assert energy.note == why and "powercap" in energy.note
    else:
        assert energy.source == "rapl" and energy.joules_per_image >= 0


def test_nvml_energy_from_recorded_readings(monkeypatch):
    nvml = fake_nvml.module()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    counter, why = power.energy_counter("cuda:0")
    assert why is None and isinstance(counter, NvmlCounter) and counter.domains == ["NVIDIA H100 80GB HBM3"]
    meter = EnergyMeter("cuda:0", counter=counter)
    readings = fake_nvml.load()["energy_mj"]
    for _ in range(3):  # three calls of one image each
        meter.start()
        meter.stop(images=1)
    energy = meter.result()
    joules = (readings[2] - readings[1] + readings[4] - readings[3] + readings[6] - readings[5]) / 1e3
    assert energy.source == "nvml" and energy.images == 3
    assert energy.joules == pytest.approx(joules) and energy.joules_per_image == pytest.approx(joules / 3)
    assert energy.mean_watts == pytest.approx(joules / energy.seconds)
    assert Energy.from_json(energy.to_json()) == energy


def test_nvml_missing_is_a_reason_not_a_crash(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    counter, why = power.energy_counter("cuda")
    assert counter is None and "nvidia-ml-py" in why
    nvml = fake_nvml.module()

    def unsupported(handle):
        raise nvml.NVMLError("Not Supported")

    nvml.nvmlDeviceGetTotalEnergyConsumption = unsupported
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    counter, why = power.energy_counter("cuda")
    assert counter is None and "Not Supported" in why and "Volta" in why
    assert "no energy counter" in power.energy_counter("mps")[1]


def test_nvml_readings_decode_clock_and_reasons():
    nvml = fake_nvml.module("throttled")
    nvml.nvmlDeviceGetMemoryInfo("gpu0")
    nvml.nvmlDeviceGetMemoryInfo("gpu0")  # the second recorded sample
    sample = fake_nvml.load()["runs"]["throttled"][1]
    got = power.nvml_readings(nvml, "gpu0")
    assert got == {"gpu_power_w": sample["power_mw"] / 1e3, "gpu_temp_c": sample["temp_c"],
                   "sm_clock_mhz": sample["sm_clock_mhz"], "sm_clock_max_mhz": 1980,
                   "throttle_reasons": ["sw_power_cap"]}
    assert decode_reasons(0x20 | 0x40 | 0x1) == ["sw_thermal", "hw_thermal", "gpu_idle"]
    assert decode_reasons(0) == [] and decode_reasons(0x10000) == ["0x10000"]


def test_benchmark_records_energy_per_case(tiny_pipe, monkeypatch):
    ticks = iter(range(0, 10_000, 7))

    class Counter:  # a counter that advances 7 J per reading: what the meter does with it is checked
        source, domains, note = "rapl", ["intel-rapl:0 (package-0)"], "the whole CPU package"

        def read(self):
            return float(next(ticks))

    monkeypatch.setattr(power, "energy_counter", lambda device: (Counter(), None))
    res = lab.benchmark(tiny_pipe, [lab.Case("a red circle", steps=1, name="a")], warmup=1, repeats=2,
                        progress=False)
    energy = res.cases[0].energy
    assert energy.source == "rapl" and energy.images == 2 and energy.joules == pytest.approx(14.0)
    assert energy.joules_per_image == pytest.approx(7.0) and res.to_frame().loc["a", "energy_j_per_image"] == 7.0
    assert "| case" in power.summary(res) and "whole CPU package" in power.summary(res)
    monkeypatch.setattr(power, "energy_counter", lambda device: (None, "no RAPL energy counter: none here"))
    res = lab.benchmark(tiny_pipe, lab.Case("a red circle", steps=1, name="a"), warmup=0, repeats=1, progress=False)
    assert res.cases[0].energy == Energy.unreadable("no RAPL energy counter: none here")
    assert "not measured" in power.summary(res) and "none here" in power.summary(res)


def test_old_results_without_energy_still_load(tmp_path):
    from lab.experiments import Comparison

    # a line as lab wrote it before energy and threads were fields
    line = {"recipe": "fp32", "case": "a", "seed": 0, "status": "ok", "steps": 2, "peak_rss_mb": 900.0,
            "rss_before_mb": 800.0, "weight_bytes": {"unet": 2**20},
            "latency": lab.Latency.from_values([1.0, 1.1]).to_dict()}
    (tmp_path / "results.jsonl").write_text(json.dumps(line) + "\n")
    cmp = Comparison.load(tmp_path, model="tiny")
    assert cmp.records[0].energy is None and cmp.records[0].threads is None
    assert "energy_j_per_image" not in cmp.to_frame()
    assert cmp.energy_notes() == ["recorded before lab measured energy"]


def test_compare_records_energy_and_the_report_shows_it(tmp_path, monkeypatch):
    from lab.reporting import before_after

    ticks = iter(range(0, 100_000, 5))

    class Counter:
        source, domains, note = "rapl", ["intel-rapl:0 (package-0)"], "the whole CPU package"

        def read(self):
            return float(next(ticks))

    monkeypatch.setattr(power, "energy_counter", lambda device: (Counter(), None))
    case = lab.Case("a red circle on the left", steps=1, name="circle")
    cmp = lab.compare("tiny", ["fp32", "steps-2"], [case], repeats=2, warmup=0, out=tmp_path, progress=False,
                      isolate=False)
    record = cmp.record("fp32", "circle")
    assert record.energy.source == "rapl" and record.energy.joules_per_image == pytest.approx(5.0)
    assert lab.Comparison.load(tmp_path).record("fp32", "circle").energy == record.energy  # through results.jsonl
    assert cmp.to_frame().loc["steps-2", "energy_j_per_image"] == pytest.approx(5.0)
    quality = lab.evaluate(cmp)
    row = before_after(cmp, "steps-2", quality).loc["energy per image (J)"]
    assert list(row) == [pytest.approx(5.0), pytest.approx(5.0), "+0.0%"]
    rows = lab.gpucheck.energy_rows("sd15", tmp_path)  # what gpu_check reports per ladder rung
    assert [(r["recipe"], r["source"], r["j_per_image"]) for r in rows] == [("fp32", "rapl", 5.0),
                                                                             ("steps-2", "rapl", 5.0)]
    md = lab.gpucheck.GpuCheck(out=str(tmp_path), smoke=True, energy=rows).to_markdown()
    assert "## Energy per image" in md and "| sd15     | steps-2" in md
    for r in cmp.records:  # as on this VM: no counter, so no figure and the reason instead
        r.energy = Energy.unreadable("no RAPL energy counter: /sys/class/powercap does not exist")
    row = before_after(cmp, "steps-2", quality).loc["energy per image (J)"]
    assert row.iloc[0] != row.iloc[0] and row.iloc[1] != row.iloc[1]  # NaN, not a number made up
    assert row["change"] == "not measured: no RAPL energy counter: /sys/class/powercap does not exist"
    md = lab.gpucheck.GpuCheck(out=str(tmp_path), smoke=True, energy=[
        {"ladder": "sd15", "recipe": "fp32", "source": None, "j_per_image": None, "mean_w": None,
         "note": "no RAPL energy counter: /sys/class/powercap does not exist"}]).to_markdown()
    assert "Not measured: no RAPL energy counter" in md
