"""Batch sweep: fields and shapes, the largest batch within a budget on recorded numbers, JSON, the recommender."""

import pytest

from lab._checks import LabError
from lab.env import RecipeEnv
from lab.presets import recommend
from lab.stats import Latency
from lab.throughput import BatchPoint, ThroughputResult, batch_sweep

CPU_AMX = RecipeEnv("cpu", cpu_flags=("avx512f", "amx_bf16"))


def point(prompts, per, seconds, peak, status="ok"):
    if status != "ok":
        return BatchPoint(prompts, per, status, error="OutOfMemoryError: out of memory")
    lat = Latency.from_values([seconds * 0.98, seconds, seconds * 1.03])
    images = prompts * per
    return BatchPoint(prompts, per, "ok", latency=lat, images_per_s=images / seconds,
                      images_per_s_iqr=0.02 * images / seconds, peak_mem_mb=peak, peak_rss_mb=peak + 300,
                      first_call_s=seconds * 2)


def recorded(points):
    return ThroughputResult(model="sd15-arch", recipe="bf16+sdpa+channels-last", device="cpu", size=256, steps=4,
                            warmup=1, repeats=3, points=points, weight_mb=1900.0)


# batch 4 is the fastest per image; peak memory grows by 100 MiB per image over 2000 MiB
SWEEP = recorded([point(1, 1, 1.0, 2100), point(2, 1, 1.6, 2200), point(4, 1, 3.0, 2400), point(2, 2, 3.1, 2400)])


def test_largest_fit_reads_measured_points_then_the_line():
    inside = SWEEP.largest_fit(2250)
    assert (inside.images, inside.estimated) == (2, False)  # batch 4 needs 2400
    beyond = SWEEP.largest_fit(3000)
    assert beyond.estimated and beyond.images == 10  # (3000 - 2000) / 100 per image
    assert SWEEP.largest_fit(2400).images == 4
    none = SWEEP.largest_fit(1000)
    assert none.images is None and "2100" in none.reason
    with pytest.raises(LabError, match="budget_mb"):
        SWEEP.largest_fit(0)


def test_an_out_of_memory_batch_caps_the_fit():
    sweep = recorded([point(1, 1, 1.0, 2100), point(2, 1, 1.6, 2200), point(4, 1, 0, 0, status="oom"),
                      BatchPoint(8, 1, "skipped", error="a batch of 4 images ran out of memory")])
    fit = sweep.largest_fit(10_000)
    assert (fit.images, fit.estimated) == (2, False) and "out of memory" in fit.reason
    assert sweep.best().images == 2


def test_best_within_a_budget_and_json_round_trip(tmp_path):
    assert SWEEP.best().images == 4 and SWEEP.best(memory_budget_mb=2300).images == 2
    path = SWEEP.save(tmp_path / "t.json")
    again = ThroughputResult.load(path)
    assert again == SWEEP
    frame = again.to_frame()
    assert list(frame.index) == ["1×1", "2×1", "4×1", "2×2"]
    assert {"images_per_s", "images_per_s_iqr", "latency_s", "latency_iqr_s", "peak_mem_mb"} <= set(frame.columns)
    assert "median of 3" in again.to_markdown()
    with pytest.raises(ValueError, match="status"):
        BatchPoint(1, 1, "fine")


def test_recommend_throughput_picks_the_measured_batch():
    rec = recommend(CPU_AMX, "throughput", throughput=SWEEP)
    assert rec.batch == 4 and any("4 prompts x 1 images" in r for r in rec.reasons)
    tight = recommend(CPU_AMX, "throughput", throughput=SWEEP, memory_budget=2300 / 1024)
    assert tight.batch == 2 and any("largest batch within" in r for r in tight.reasons)
    blind = recommend(CPU_AMX, "throughput")
    assert blind.batch is None and any("lab.batch_sweep" in r for r in blind.reasons)
    assert blind.recipe == recommend(CPU_AMX, "balance").recipe


def test_plot_throughput_has_no_layout_problems():
    from lab.plots import layout_problems, plot_throughput

    fig = plot_throughput(SWEEP)
    assert len(fig.axes[0].lines) >= 1 and not layout_problems(fig)


@pytest.mark.slow
def test_a_real_sweep_has_one_point_per_batch():
    from lab.cases import Case

    result = batch_sweep("tiny-random", [2, 1], images_per_prompt=[1, 2], case=Case("a cube", steps=1),
                         warmup=0, repeats=1, progress=False, device="cpu")
    assert [(p.prompts, p.images_per_prompt) for p in result.points] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for p in result.points:
        assert p.status == "ok", p.error
        assert p.latency.n == 1 and p.images_per_s == pytest.approx(p.images / p.latency.median)
        assert p.peak_mem_mb > 0 and p.first_call_s > 0
    assert ThroughputResult.from_json(result.to_json()) == result


def test_bad_sweeps_are_refused_before_loading():
    with pytest.raises(LabError, match="batch"):
        batch_sweep("tiny-random", [0])
    with pytest.raises(LabError, match="repeats"):
        batch_sweep("tiny-random", [1], repeats=0)


def test_cli_refuses_bad_batches(capsys):
    from lab.cli import main

    assert main(["throughput", "--model", "tiny-random", "--batches", "1,x"]) == 2
    assert "1,x" in capsys.readouterr().err
