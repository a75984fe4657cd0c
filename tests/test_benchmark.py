import json

import numpy as np
import pytest

import lab
from lab.benchmarking import BenchmarkResult, timed_loop
from lab.stats import Latency


@pytest.fixture(scope="module")
def result(tiny_pipe, tmp_path_factory):
    cases = [lab.Case("a red circle", steps=3, name="one"), lab.Case("a blue square", steps=2, name="two", seed=5)]
    return lab.benchmark(tiny_pipe, cases, warmup=1, repeats=3, progress=False,
                         image_dir=tmp_path_factory.mktemp("images"))


def test_result_holds_statistics_per_case(result):
    assert [c.case.name for c in result.cases] == ["one", "two"]
    for c in result.cases:
        lat = c.latency
        assert lat.n == 3 == len(c.latencies) == len(c.runs)
        assert lat.min <= lat.median <= lat.max and lat.min <= lat.mean <= lat.max
        assert c.first_call_s > 0 and c.images_per_s == pytest.approx(1 / lat.median)
        assert c.peak_rss_mb > 50 and c.cpu_percent > 0
        assert c.peak_cuda_allocated_mb is None  # CPU run
        assert len(c.stages.steps) == len(c.runs[0].denoiser_steps)
        assert c.stages.denoiser > c.stages.text_encoder
        assert c.error is None


def test_environment_fingerprint(result):
    env = result.env
    assert env.packages["torch"] and env.packages["diffusers"] and env.packages["transformers"]
    assert "optimum-quanto" in env.packages
    assert env.device == "cpu" and env.cpu_model and env.torch_threads >= 1
    assert result.model == "tiny" and result.dtype == "fp32"


def test_json_roundtrip_is_exact(result, tmp_path):
    again = BenchmarkResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result
    path = result.save(tmp_path / "r.json")
    assert BenchmarkResult.load(path).to_dict() == result.to_dict()


def test_frame_and_markdown(result):
    frame = result.to_frame()
    assert list(frame.index) == ["one", "two"]
    assert {"median_s", "iqr_s", "denoiser_s", "vae_decode_s", "peak_rss_mb"} <= set(frame.columns)
    text = result.to_markdown()
    assert "| one" in text and "median_s" in text


def test_images_saved(result):
    from PIL import Image

    for c in result.cases:
        assert Image.open(c.image).size == (64, 64)


def test_a_failing_case_is_recorded_and_the_rest_still_run(tiny_pipe, monkeypatch):
    original = tiny_pipe.check_inputs

    def check_inputs(prompt, *args, **kwargs):
        if prompt == "boom":
            raise RuntimeError("simulated failure")
        return original(prompt, *args, **kwargs)

    monkeypatch.setattr(tiny_pipe, "check_inputs", check_inputs)
    res = lab.benchmark(tiny_pipe, [lab.Case("boom", steps=1), lab.Case("fine", steps=1)], repeats=1, progress=False)
    assert res.cases[0].error == "RuntimeError: simulated failure" and res.cases[0].latency is None
    assert res.cases[1].error is None and res.cases[1].latency.n == 1
    assert [c.case.prompt for c in res.failed] == ["boom"]
    assert BenchmarkResult.from_json(res.to_json()) == res


@pytest.mark.parametrize("kwargs, message", [({"repeats": 0}, "repeats"), ({"warmup": -1}, "warmup")])
def test_bad_counts_fail_before_running(tiny_pipe, kwargs, message):
    with pytest.raises(lab.LabError, match=message):
        lab.benchmark(tiny_pipe, lab.Case("x", steps=1), **kwargs)


def test_empty_cases_and_unwritable_image_dir(tiny_pipe, tmp_path):
    with pytest.raises(lab.LabError, match="at least one case"):
        lab.benchmark(tiny_pipe, [])
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(lab.LabError, match="not writable"):
        lab.benchmark(tiny_pipe, lab.Case("x", steps=1), image_dir=blocker / "images")


def test_latency_statistics_match_numpy():
    values = [0.5, 0.1, 0.3, 0.2, 0.9, 0.4]
    lat = Latency.from_values(values)
    assert lat.median == pytest.approx(np.median(values))
    assert lat.iqr == pytest.approx(np.percentile(values, 75) - np.percentile(values, 25))
    assert lat.p90 == pytest.approx(np.percentile(values, 90))
    assert lat.std == pytest.approx(np.std(values, ddof=1))
    assert (lat.min, lat.max, lat.n) == (0.1, 0.9, 6)
    with pytest.raises(ValueError, match="negative"):
        Latency.from_values([0.1, -0.2])


def test_bare_loop_reference(tiny_pipe):
    times = timed_loop(tiny_pipe, lab.Case("x", steps=1), repeats=2)
    assert len(times) == 2 and all(t > 0 for t in times)
