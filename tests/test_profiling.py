import gzip
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from pathlib import Path

import lab
from lab.profiling import ProfileResult, profile

# PNDM runs one extra UNet evaluation: a 2-step profiled call holds three denoising ranges
RANGES = {"lab:text_encoder", "lab:denoiser_step_0", "lab:denoiser_step_1", "lab:denoiser_step_2", "lab:vae_decode"}


@pytest.fixture(scope="module")
def result(tiny_pipe, tmp_path_factory):
    return profile(tiny_pipe, lab.Case("a red circle", steps=6, name="circle"), record_steps=2,
                   out_dir=tmp_path_factory.mktemp("profile"))


def _range_names(trace: dict) -> set[str]:
    return {e["name"] for e in trace["traceEvents"] if str(e.get("name", "")).startswith("lab:")}


def test_trace_parses_and_holds_only_the_recorded_steps(result):
    trace = json.loads(open(result.trace_path).read())
    assert _range_names(trace) == RANGES  # the profiled call ran 2 of the case's 6 steps
    assert result.trace_bytes == len(open(result.trace_path, "rb").read())
    assert result.denoising_steps == 6 and result.record_steps == 2 and result.denoiser_steps == 3  # PNDM: + 1


def test_steps_are_marked_for_trace_tools_with_no_gap(result):
    trace = json.loads(open(result.trace_path).read())
    steps = sorted((e for e in trace["traceEvents"] if str(e.get("name", "")).startswith("ProfilerStep#")),
                   key=lambda e: e["ts"])
    # ProfilerStep#0 is prompt encoding, then one per denoising step, then the VAE decode
    assert [e["name"] for e in steps] == [f"ProfilerStep#{i}" for i in range(result.denoiser_steps + 2)]
    for before, after in zip(steps, steps[1:]):  # back to back: no unrecorded stretch between steps
        assert after["ts"] - (before["ts"] + before["dur"]) < 0.05 * before["dur"] + 1000
    ranges = {e["name"]: e for e in trace["traceEvents"] if str(e.get("name", "")).startswith("lab:")}
    assert ranges["lab:vae_decode"]["ts"] - (ranges["lab:denoiser_step_2"]["ts"] + ranges["lab:denoiser_step_2"]["dur"]) \
        < 0.1 * ranges["lab:denoiser_step_2"]["dur"]


def test_holistic_trace_analysis_reads_the_steps(result, tmp_path):
    hta = pytest.importorskip("hta.trace_analysis", reason="holistictraceanalysis is a test dependency")
    analysis = hta.TraceAnalysis(trace_dir=str(Path(result.trace_path).parent))
    steps = [int(s) for s in analysis.get_profiler_steps()]
    assert steps[:result.denoiser_steps + 1] == list(range(result.denoiser_steps + 1))


def test_profiler_chatter_is_kept_off_stderr(tiny_pipe, tmp_path, capfd):
    res = profile(tiny_pipe, lab.Case("x", steps=2), record_steps=1, out_dir=tmp_path)
    err = capfd.readouterr().err
    assert "profiler_start" not in err and "CPUAllocator" not in err
    assert any("profiler" in m.lower() or "alloc" in m.lower() for m in res.profiler_messages)


def test_gzip_and_plain_exports(result, tmp_path):
    gz = result.export_chrome_trace(tmp_path / "t.json.gz")
    with gzip.open(gz, "rt") as f:
        assert _range_names(json.load(f)) == RANGES
    plain = result.export_chrome_trace(tmp_path / "t.json")
    assert _range_names(json.loads(plain.read_text())) == RANGES


def test_stage_table_comes_from_the_ranges(result):
    stages = result.stages()
    assert list(stages.index) == ["text_encoder", "denoiser_step_0", "denoiser_step_1", "denoiser_step_2", "vae_decode"]
    assert (stages["ms"] > 0).all() and stages["share"].sum() == pytest.approx(1.0)


def test_op_tables(result):
    narrow = result.ops(by="self", top=5)
    assert list(narrow.columns) == ["calls", "self_cpu_ms", "total_cpu_ms", "share_%"]
    assert list(narrow["self_cpu_ms"]) == sorted(narrow["self_cpu_ms"], reverse=True)
    assert (narrow.round(3) == narrow).all().all()  # rounded for display
    assert not any(name.startswith(("ProfilerStep", "lab:")) for name in result.ops(top=None).index)
    top = result.ops(by="self", top=5, full=True)
    assert len(top) == 5 and list(top["self_cpu_us"]) == sorted(top["self_cpu_us"], reverse=True)
    assert {"calls", "self_cpu_us", "cpu_total_us", "self_device_us", "device_total_us", "input_shapes",
            "stage_share"} <= set(top.columns)
    assert all("\n" not in s for s in top["input_shapes"])  # one line per op
    assert result.kernels().empty  # a CPU trace has no device kernels
    unet = result.ops(stage="denoiser", top=None, full=True)
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in unet.index  # attention runs in the UNet
    assert unet["stage_share"].sum() <= 1.0 + 1e-6  # self times within the stage never exceed it
    assert "aten::embedding" in result.ops(stage="text_encoder", top=None).index
    assert "aten::embedding" not in unet.index and "aten::embedding" not in result.ops(stage="vae_decode").index
    by_total = result.ops(by="total", top=3, full=True)
    assert list(by_total["cpu_total_us"]) == sorted(by_total["cpu_total_us"], reverse=True)
    assert "[" in unet.loc["aten::mkldnn_convolution", "input_shapes"]  # shapes recorded
    with pytest.raises(lab.LabError, match="sort key"):
        result.ops(by="median")


def test_json_roundtrip(result):
    assert ProfileResult.from_json(result.to_json()) == result


def test_memory_timeline_with_stacks(tiny_pipe, tmp_path):
    res = profile(tiny_pipe, lab.Case("x", steps=2), record_steps=1, out_dir=tmp_path, with_stack=True)
    assert res.memory_timeline and open(res.memory_timeline).read().lstrip().startswith("<")


def test_memory_timeline_absence_is_explained(result):
    assert result.memory_timeline is None and any("with_stack" in n for n in result.notes)


@pytest.mark.parametrize("kwargs, message", [({"record_steps": 5}, "record_steps=5 is more than"),
                                             ({"record_steps": 0}, "record_steps must be")])
def test_bad_record_steps(tiny_pipe, tmp_path, kwargs, message):
    with pytest.raises(lab.LabError, match=message):
        profile(tiny_pipe, lab.Case("x", steps=4), out_dir=tmp_path, **kwargs)


def test_unwritable_out_dir(tiny_pipe, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(lab.LabError, match="not writable"):
        profile(tiny_pipe, lab.Case("x", steps=2), out_dir=blocker / "p")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tensorboard_lists_the_run(result):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", result.tensorboard_dir, "--host", "127.0.0.1",
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/data/plugin/pytorch_profiler/runs"
    body = None
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                body = json.loads(urllib.request.urlopen(url, timeout=5).read())
                if body.get("runs") and not body.get("loading"):
                    break
            except OSError:
                pass
            time.sleep(1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert body is not None and body["runs"] == ["tiny-circle"], body
