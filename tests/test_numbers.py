"""Every number agrees with every other: one speed-up, outliers flagged, takeaways computed from results."""

import math

import pytest
from PIL import Image

import lab
from lab import plots
from lab.benchmarking import StageSummary
from lab.experiments import Comparison, RunRecord
from lab.reporting import before_after, outlier_notes
from lab.stats import Latency

# the case: fp32 0.677 s, a recipe that is faster on one case and slower on the other, and one
# 105 s repeat that the medians must resist and the table must flag
LATENCIES = {
    ("fp32", "a"): [0.60, 0.61, 0.62], ("fp32", "b"): [0.75, 0.76, 0.74],
    ("bf16", "a"): [0.40, 0.41, 0.42], ("bf16", "b"): [0.90, 0.91, 105.0],
    ("quanto-unet-int8w", "a"): [0.70, 0.71, 0.72], ("quanto-unet-int8w", "b"): [0.80, 0.81, 0.82],
}


@pytest.fixture
def cmp(tmp_path):
    records = []
    for (recipe, case), values in LATENCIES.items():
        folder = tmp_path / "images" / recipe
        folder.mkdir(parents=True, exist_ok=True)
        shade = {"fp32": 200, "bf16": 198, "quanto-unet-int8w": 190}[recipe]
        Image.new("RGB", (64, 64), (shade, 40, 40)).save(folder / f"{case}-s0.png")
        records.append(RunRecord(recipe=recipe, case=case, seed=0, status="ok", prompt="x", steps=20,
                                 latency=Latency.from_values(values), first_call_s=1.0, peak_rss_mb=500.0,
                                 rss_before_mb=450.0, cpu_percent=180.0, weight_bytes={"unet": 2**20},
                                 ssim=1.0 if recipe == "fp32" else 0.95, psnr=40.0,
                                 stages=StageSummary(0.01, 0.5, 0.025, 0.08, 0.02, []),
                                 image=f"images/{recipe}/{case}-s0.png"))
    records.append(RunRecord(recipe="model-cpu-offload", case="a", seed=0, status="skipped", error="needs CUDA"))
    return Comparison(model="tiny", baseline="fp32", out=str(tmp_path), records=records)


def test_latency_change_and_speedup_are_one_number(cmp):
    frame = cmp.to_frame()
    base = frame.loc["fp32", "latency_s"]
    for recipe in ("bf16", "quanto-unet-int8w"):
        assert base / frame.loc[recipe, "latency_s"] == pytest.approx(frame.loc[recipe, "speedup"], rel=1e-12)
    # geometric means of run medians, and of per-case ratios
    assert frame.loc["fp32", "latency_s"] == pytest.approx(math.sqrt(0.61 * 0.75))
    assert frame.loc["bf16", "speedup"] == pytest.approx(math.sqrt((0.61 / 0.41) * (0.75 / 0.91)))
    assert frame.loc["fp32", "speedup"] == pytest.approx(1.0)


def test_a_105_s_repeat_is_flagged_and_does_not_move_the_latency(cmp):
    frame = cmp.to_frame()
    assert frame.loc["bf16", "outliers"] == 1 and frame.loc["fp32", "outliers"] == 0
    assert frame.loc["bf16", "slowest_repeat_s"] == 105.0
    assert frame.loc["bf16", "latency_s"] < 1.0
    assert [(r.recipe, r.case) for r in cmp.outlier_runs()] == [("bf16", "b")]
    notes = outlier_notes(cmp)
    assert len(notes) == 1 and "105.000 s" in notes[0] and "`bf16` on b" in notes[0]


def test_narrow_table_by_default_full_on_request(cmp):
    narrow, full = cmp.to_frame(full=False), cmp.to_frame()
    assert list(narrow.columns) == ["status", "latency_s", "latency_iqr_s", "speedup", "verdict", "peak_mem_mb",
                                    "weight_mb", "ssim", "psnr", "outliers", "reason"]  # no host column: these runs recorded none
    assert {"first_call_s", "apply_s", "peak_mem_delta_mb", "runs", "ok"} <= set(full.columns)
    assert narrow.loc["model-cpu-offload", "reason"] == "needs CUDA"
    assert "first_call_s" not in cmp.to_markdown() and "first_call_s" in cmp.to_markdown(full=True)


def test_before_after_states_the_same_change_as_the_speedup(cmp):
    quality = lab.evaluate(cmp)
    table = before_after(cmp, "bf16", quality)
    speedup = cmp.to_frame().loc["bf16", "speedup"]
    latency = table.loc[table.index[0]]
    assert latency["change"] == f"{1 / speedup - 1:+.1%}"
    assert latency["bf16"] == pytest.approx(latency["fp32"] / speedup)
    assert table.loc["runs with an outlier repeat", "bf16"] == 1


def test_report_flags_outliers_and_keeps_the_recipe_table_narrow(cmp, tmp_path):
    paths = lab.report(cmp, tmp_path / "report", recipe="bf16")
    md = paths["markdown"].read_text()
    assert "## Outliers" in md and "105.000 s" in md
    all_recipes = md.split("## All recipes\n")[1].split("\n## ")[0]
    widest = max(len(line) for line in all_recipes.splitlines())
    assert "first_call_s" not in all_recipes and widest < 180  # the verdict ("not distinguishable") is one of them
    assert "## All recipes, every column" in md
    page = paths["html"].read_text()
    assert "<details><summary>every column</summary>" in page and "<h2>Outliers</h2>" in page


def test_outlier_limit():
    assert not Latency.from_values([1.0, 1.1]).has_outlier  # two values: no way to tell which one is off
    assert Latency.from_values([1.0, 1.05, 2.5]).has_outlier
    assert not Latency.from_values([1.0, 1.05, 1.9]).has_outlier
    many = Latency.from_values([1.0, 1.01, 1.02, 1.0, 0.99, 1.0, 1.01, 1.5])
    assert many.has_outlier and many.outlier_limit < 1.5


LONG = ["fp32", "bf16+channels-last+fused-qkv+dpmpp-2m-karras+steps-4", "quanto-unet-int8w-int8a+vae-tiling",
        *[f"recipe-number-{i}+channels-last" for i in range(9)]]


@pytest.fixture
def wide(tmp_path):
    records = []
    for i, recipe in enumerate(LONG):
        folder = tmp_path / "images" / recipe
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), (200 - i, 40, 40)).save(folder / "a-s0.png")
        records.append(RunRecord(recipe=recipe, case="a", seed=0, status="ok", prompt="x", steps=20,
                                 latency=Latency.from_values([0.5 + 0.05 * i] * 3), peak_rss_mb=500.0,
                                 rss_before_mb=450.0, weight_bytes={"unet": 2**20 * (i + 1)}, ssim=1.0 - i / 50,
                                 psnr=40.0, stages=StageSummary(0.01, 0.4 + 0.05 * i, 0.02, 0.08, 0.02, []),
                                 image=f"images/{recipe}/a-s0.png"))
    return Comparison(model="tiny", baseline="fp32", out=str(tmp_path), records=records)


@pytest.mark.parametrize("name", ["plot_latency", "plot_speedup", "plot_memory", "plot_stage_breakdown",
                                  "plot_image_grid"])
def test_long_recipe_names_are_never_clipped_or_colliding(wide, name):
    fig = getattr(plots, name)(wide)
    assert fig.get_size_inches()[0] <= 7.01 or name == "plot_image_grid"
    assert plots.layout_problems(fig) == []


def test_layout_check_sees_a_clipped_and_a_colliding_label():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))  # no constrained layout: long rotated-free labels collide
    ax.bar([f"a-very-long-recipe-name-{i}" for i in range(6)], range(6))
    problems = plots.layout_problems(fig)
    plt.close(fig)
    assert any(p.startswith("overlap") for p in problems)


def test_wrap_label_breaks_at_plus():
    assert plots.wrap_label("bf16+channels-last+fused-qkv", 20) == "bf16+channels-last+\nfused-qkv"
    assert all(len(line) <= 30 for line in plots.wrap_label("a" * 50 + "+b").splitlines())


def test_stage_comparison_shows_baseline_and_recipe(tiny_pipe):
    case = lab.Case("a red circle on the left, white background", steps=2, name="c")
    results = {"fp32": lab.benchmark(tiny_pipe, case, warmup=0, repeats=1, progress=False),
               "bf16": lab.benchmark(tiny_pipe, case, warmup=0, repeats=1, progress=False)}
    fig = plots.plot_stage_comparison(results)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["bf16", "fp32"]
    assert len(ax.patches) == 8 and "fp32 vs bf16" in ax.get_title()
    assert plots.layout_problems(fig) == []


def test_benchmark_table_is_narrow_by_default(tiny_pipe):
    result = lab.benchmark(tiny_pipe, lab.Case("a red circle", steps=2, name="c"), warmup=0, repeats=1,
                           progress=False)
    narrow = result.to_markdown()
    header = next(line for line in narrow.splitlines() if line.startswith("| case"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["case", "steps", "median_s", "iqr_s", "denoiser_step_ms",
                                                                 "peak_rss_mb", "images_per_s"]
    assert "text_encoder_s" in result.to_markdown(full=True) and "text_encoder_s" in result.to_frame()


def test_takeaways_state_what_the_run_found(cmp):
    from lab import takeaways

    text = takeaways.compare(cmp, {"precision": ["bf16"], "quantization": ["quanto-unet-int8w"]})
    verdicts = cmp.verdicts()
    # bf16 is faster on one case and slower on the other (its mean speed-up 1.11×): no claim either way
    assert verdicts["bf16"].verdict == "not distinguishable" and cmp.to_frame().loc["bf16", "speedup"] > 1.1
    assert "Fastest here" not in text and "No recipe is distinguishably faster than `fp32`" in text
    assert "Not distinguishable from `fp32`" in text and "`bf16`" in text.split("Not distinguishable")[1]
    assert "`model-cpu-offload` (needs CUDA)" in text and "outlier" in text
    slower = verdicts["quanto-unet-int8w"]
    assert (slower.verdict == "slower") == ("Slower than the baseline here: `quanto-unet-int8w`" in text)

    # a recipe faster on every run, with tight repeats: the speed-up is stated, with its interval
    for r in cmp.records:
        if r.recipe == "bf16":
            r.latency = Latency.from_values([v * 0.5 for v in LATENCIES[("fp32", r.case)]])
    v = cmp.verdict("bf16")
    text = takeaways.compare(cmp)
    assert v.verdict == "faster" and v.low <= 2.0 <= v.high
    assert f"Fastest here: **`bf16`**, {v.speedup:.2f}× the speed of `fp32` (95 % interval {v.low:.2f}" in text

    assert takeaways.lora(0.409, 0.465).startswith("- LoRA: unfused 0.409 s, fused 0.465 s per call: 14% more")
    assert "same time" in takeaways.lora(0.409, 0.41) and "less time" in takeaways.lora(0.5, 0.4)


def test_interaction_takeaway_reads_the_gain_ratio(tmp_path):
    from lab import takeaways

    def rec(recipe, latency):
        return RunRecord(recipe=recipe, case="a", seed=0, status="ok", latency=Latency.from_values([latency] * 3), peak_rss_mb=500.0, rss_before_mb=450.0,
                         weight_bytes={"unet": 1})

    combo = Comparison(model="m", baseline="fp32", out=str(tmp_path), records=[
        rec("fp32", 1.0), rec("bf16", 0.5), rec("channels-last", 0.8), rec("bf16+channels-last", 0.48)])
    text = takeaways.interactions(combo)
    ratio = (1 / 0.48) / (2 * 1.25)
    assert f"gain ratio {ratio:.2f}" in text and "overlapped" in text
    combo.records[-1] = rec("bf16+channels-last", 0.3)
    assert "did better than the product" in takeaways.interactions(combo)


def test_verify_takeaway_reports_speedup_spread_and_gate(cmp):
    from lab import takeaways

    text = takeaways.verify(cmp, lab.evaluate(cmp), "bf16")
    first = text.splitlines()[0]
    verdict = cmp.verdict("bf16")
    assert first.startswith(f"- `bf16` (chosen): not distinguishable ({verdict.reason})") and "quality gate **" in first
    assert "rerun with more repeats" in first and "`quanto-unet-int8w`" in text


def test_diagnose_takeaway_names_the_measured_shares(tiny_pipe):
    from lab import takeaways

    bench = lab.benchmark(tiny_pipe, lab.Case("a red circle on the left, white background", steps=2, name="c"),
                          warmup=0, repeats=1, progress=False)
    text = takeaways.diagnose(bench, lab.diagnose(bench))
    shares = bench.cases[0].stages.shares()
    top = max(shares, key=shares.get)
    # on a busy host a line naming the contention comes first
    assert f"- **{top}** takes the largest share" in text and f"{shares[top]:.0%}" in text
    assert text.startswith("- **Measured under contention**") == bool(bench.busy)
    assert f"{bench.cases[0].latency.median:.3f} s (median of 1; the denoiser" in text and "over 3 denoiser calls for 2 steps" in text  # PNDM
