"""Quality gate over a comparison, plots, trace diff and the before/after report."""

import html.parser

import pytest

import lab
from lab import plots
from lab.experiments import compare
from lab.profiling import diff_profiles, profile
from lab.quality import evaluate

RECIPES = ["fp32", "bf16", "steps-1", "quanto-unet-int4w"]


@pytest.fixture(scope="module")
def cmp(tmp_path_factory):
    cases = [lab.Case("a red circle on the left, white background", steps=20, name="circle"),
             lab.Case("a blue square at the top and a yellow triangle at the bottom, black background", steps=20,
                      name="square")]
    return compare("tiny", RECIPES, cases, repeats=1, warmup=0, out=tmp_path_factory.mktemp("cmp"), device="cpu",
                   progress=False)


def test_quality_gate_per_image_and_aggregate(cmp):
    report = evaluate(cmp)
    assert {(i.recipe, i.case) for i in report.images} == {(r, c) for r in RECIPES[1:] for c in ("circle", "square")}
    summary = report.summary()
    assert list(summary.index) == RECIPES[1:] and set(summary["verdict"]) <= {"pass", "fail"}
    strict = evaluate(cmp, lab.QualityThresholds(ssim_min=0.9999, psnr_min=99))
    assert not strict.passed and set(strict.summary()["verdict"]) == {"fail"}
    lax = evaluate(cmp, lab.QualityThresholds(ssim_min=-1, psnr_min=0, adherence_drop_max=None))
    assert lax.passed


def test_adherence_beside_ssim_shows_damage(cmp, tmp_path):
    report = evaluate(cmp)
    assert all(i.adherence is not None and i.baseline_adherence is not None for i in report.images)
    assert "adherence" in report.summary()
    by_recipe = lab.quality.comparison_adherence(cmp)
    assert list(by_recipe) == RECIPES and all(len(r.prompts) == 2 for r in by_recipe.values())
    # The trained tiny model draws both scenes at 20 steps; one step leaves a blur that misses them.
    assert by_recipe["fp32"].overall >= 0.8
    assert by_recipe["steps-1"].overall < by_recipe["fp32"].overall - 0.2
    one_step = [i for i in report.images if i.recipe == "steps-1"]
    assert not any(i.passed for i in one_step)
    fig = plots.plot_adherence(by_recipe, path=tmp_path / "adherence.png")
    assert len(fig.axes[0].patches) == len(RECIPES) * 6  # five attributes and overall, per recipe


def test_adherence_does_not_apply_to_free_form_prompts(tmp_path):
    free = compare("tiny-random", ["fp32", "bf16"], [lab.Case("a photo of a cat", steps=2)], repeats=1, warmup=0,
                   out=tmp_path, progress=False)
    assert all(i.adherence is None for i in evaluate(free).images)
    assert lab.quality.comparison_adherence(free) == {}
    assert plots.plot_adherence({}).axes[0].texts[0].get_text().startswith("no shape-scene prompts")


@pytest.mark.parametrize("name", ["plot_latency", "plot_speedup", "plot_memory", "plot_stage_breakdown",
                                  "plot_quality_vs_speed", "plot_image_grid", "plot_diff_grid"])
def test_comparison_plots_render_with_their_series(cmp, name, tmp_path):
    fig = getattr(plots, name)(cmp, path=tmp_path / f"{name}.png")
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
    ax = fig.axes[0]
    assert plots.layout_problems(fig) == [], "labels clipped or colliding at notebook width"
    if name == "plot_latency":
        assert len(ax.patches) == len(RECIPES) and "seconds" in ax.get_xlabel()
        assert [t.get_text() for t in ax.get_yticklabels()] == RECIPES[::-1]  # read top-down in recipe order
    elif name == "plot_speedup":
        assert len(ax.patches) == len(RECIPES) - 1 and "%" in ax.get_xlabel()
    elif name == "plot_stage_breakdown":
        assert len(ax.patches) == 4 * len(RECIPES) and len(fig.legends[0].get_texts()) == 4
    elif name == "plot_quality_vs_speed":
        labels = {t.get_text() for t in ax.texts}
        assert labels == set(RECIPES) and ax.get_legend() is not None
    elif name == "plot_image_grid":
        assert len(fig.axes) == 2 * len(RECIPES)
    elif name == "plot_diff_grid":
        assert len(fig.axes) == 2 * (2 * (len(RECIPES) - 1) + 1)


def test_steps_sweep_plot(tmp_path):
    cases = [lab.Case("a red circle", steps=4, name="circle")]
    sweep = compare("tiny", ["steps-4", "steps-2", "steps-1"], cases, repeats=1, warmup=0, out=tmp_path,
                    progress=False)
    fig = plots.plot_steps_sweep(sweep)
    xs = list(fig.axes[0].lines[0].get_xdata())
    assert xs == [1, 2, 4] and fig.axes[0].get_xlabel() == "denoising steps"


def test_pareto_front():
    points = [(1.0, 0.9), (2.0, 0.95), (1.5, 0.8), (3.0, 0.95), (0.5, 0.5)]
    assert sorted(plots.pareto_front(points)) == [0, 1, 4]


def test_trace_diff_of_a_profile_with_itself_is_zero(tiny_pipe, tmp_path):
    prof = profile(tiny_pipe, lab.Case("x", steps=3), record_steps=2, out_dir=tmp_path)
    diff = diff_profiles(prof, prof)
    assert (diff.ops["delta_ms"] == 0).all() and (diff.stages["delta_ms"] == 0).all()
    assert {"text_encoder", "denoiser", "vae_decode"} <= set(diff.stages.index)
    assert plots.plot_trace_diff(diff).axes[0].get_xlabel().startswith("Δ self time")


def test_trace_diff_shows_what_changed(tiny_pipe, tmp_path):
    before = profile(tiny_pipe, lab.Case("x", steps=3), record_steps=2, out_dir=tmp_path / "a")
    math_pipe = lab.recipes.parse("math-attention").apply(lab.load_pipeline("tiny", device="cpu"))
    after = profile(math_pipe, lab.Case("x", steps=3), record_steps=1, out_dir=tmp_path / "b")
    diff = diff_profiles(before, after, before_name="sdpa", after_name="math")
    sdpa = "aten::_scaled_dot_product_flash_attention_for_cpu"

    def step_calls(prof, name):
        return sum(r.calls for r in prof.op_records if r.name == name and r.stage.startswith("denoiser_step"))

    # counted, not timed (times move with the host's load): inside the denoising steps the math processor
    # calls no fused SDPA and explicit matmuls instead; only the CLIP text encoder still calls SDPA
    assert step_calls(before, sdpa) > 0 and step_calls(after, sdpa) == 0
    assert step_calls(after, "aten::bmm") > step_calls(before, "aten::bmm")
    assert sdpa in diff.ops.index and diff.ops.loc[sdpa, "after_ms"] > 0  # the text encoder's, in the diff


class _Collect(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_report_is_self_contained_and_names_every_recipe(cmp, tmp_path):
    paths = lab.report(cmp, tmp_path)
    page = paths["html"].read_text()
    parser = _Collect()
    parser.feed(page)
    text = " ".join(parser.text)
    assert all(r in text for r in RECIPES)
    images = [a["src"] for t, a in parser.tags if t == "img"]
    assert len(images) == 6 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "Before / after" in text and "recipe:" in text and "torch" in text
    md = paths["markdown"].read_text()
    assert "## Before / after" in md and "```yaml" in md and md.count("data:image/png;base64,") == 6


def test_report_of_a_chosen_recipe_and_bad_choices(cmp, tmp_path):
    paths = lab.report(cmp, tmp_path, recipe="bf16")
    assert "chosen <code>bf16</code>" in paths["html"].read_text()
    with pytest.raises(lab.LabError, match="no successful run"):
        lab.report(cmp, tmp_path, recipe="euler")
