"""The cache family (lab.recipes.caches) and whole-trajectory fidelity (lab.trajectory) on tiny and tiny-flux."""

import json
import re

import pytest

import lab
from lab._checks import LabError
from lab.denoiser import model_kind
from lab.experiments import Comparison, RunRecord
from lab.recipes import caches, catalog, get, parse
from lab.stats import Latency
from lab.trajectory import Trajectory

STEPS = 6
FLUX_BLOCKS = 6  # tiny-flux: 2 double-stream + 4 single-stream blocks


@pytest.fixture(scope="module")
def cache_run(tmp_path_factory):
    """One small comparison on tiny-flux: the baseline, a first-block cache and MagCache (calibrated)."""
    cases = [c.with_overrides(steps=STEPS) for c in lab.load_prompts(lab.default_prompts("tiny-flux"))][:1]
    out = tmp_path_factory.mktemp("caches")
    return lab.compare("tiny-flux", ["fp32", "first-block-cache-0.5", "mag-cache-0.5"], cases,
                       repeats=1, warmup=0, out=out, progress=False, isolate=False)


def test_names_carry_the_setting_and_bad_settings_are_refused():
    assert get("first-block-cache-0.12").name == "first-block-cache-0.12"
    assert parse("bf16+taylorseer-3").recipes[-1].family == "cache"
    for bad, allowed in (("first-block-cache-1.5", "(0, 1]"), ("first-block-cache-abc", "(0, 1]"),
                         ("mag-cache-0", "(0, 1]"), ("pab-1", "from 2 to 50"), ("taylorseer-2.5", "integer")):
        with pytest.raises(LabError, match=re.escape(allowed)):
            get(bad)
    with pytest.raises(LabError, match="both set cache"):
        parse("pab-2+first-block-cache-0.1")


def test_catalog_lists_every_cache_with_its_needs():
    frame = catalog()
    for spec in caches.SPECS.values():
        name = spec.name(spec.default)
        assert name in frame.index and frame.loc[name, "family"] == "cache"
        assert ("CacheMixin" in frame.loc[name, "needs"]) == spec.mixin
    assert any(n.startswith("first-block-cache-<") for n in frame.index)


def test_caches_needing_a_cache_mixin_are_refused_on_a_unet_with_the_reason():
    unet, flux = model_kind("tiny"), model_kind("tiny-flux")
    for name in ("first-block-cache-0.1", "taylorseer-3", "mag-cache-0.1", "faster-cache-2"):
        why = get(name).fits(unet)
        assert why and "CacheMixin" in why and "UNet2DConditionModel" in why
        assert get(name).fits(flux) is None
    assert get("pab-2").fits(unet) is None
    assert get("deepcache-3").fits(unet) is None and "UNet" in get("deepcache-3").fits(flux)
    no_package = lab.RecipeEnv(device="cpu")
    assert "pip install DeepCache" in get("deepcache-3").check(no_package)
    assert lab.recipes.fitting(["first-block-cache-0.1", "pab-2"], "tiny") == ["pab-2"]


@pytest.mark.parametrize("recipe", ["pab-2", "deepcache-3"])
def test_unet_caches_skip_attention_and_reset_between_calls(recipe):
    import torch

    if why := get(recipe).check(lab.RecipeEnv.detect("cpu")):
        pytest.skip(why)
    pipe = lab.load_pipeline("tiny", device="cpu")
    parse(recipe).apply(pipe)
    units = sum(1 for m in pipe.unet.modules() if type(m).__name__ == "Attention")
    counts = []
    for _ in range(2):
        with caches.count_evaluations(pipe) as c:
            pipe("a red circle on the left", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
        counts.append(c)
    first = counts[0]
    assert first["denoiser_calls"] >= STEPS  # PNDM's PLMS warm-up calls the UNet once more
    assert first["attention_computed"] + first["attention_skipped"] == first["denoiser_calls"] * units
    assert first["attention_skipped"] > 0 and "blocks_computed" not in first
    assert counts[1] == first  # the hooks' state starts afresh with each call


def test_cache_runs_record_skips_consistent_with_steps(cache_run):
    for recipe in ("first-block-cache-0.5", "mag-cache-0.5"):
        skips = cache_run.record(recipe, cache_run.records[0].case).cache_skips
        assert skips["denoiser_calls"] == STEPS
        assert skips["blocks_computed"] + skips["blocks_skipped"] == STEPS * FLUX_BLOCKS
        assert skips["blocks_skipped"] > 0
    assert cache_run.record("fp32", cache_run.records[0].case).cache_skips is None
    frame = cache_run.to_frame()
    assert 0 < frame.loc["first-block-cache-0.5", "cache_skipped"] < 1


def test_trajectory_is_zero_against_itself_and_positive_for_a_cache(cache_run):
    case = cache_run.records[0].case
    base = cache_run.record("fp32", case).trajectory
    assert base.final_rel_error == 0.0 and base.drift == [0.0] * STEPS
    cached = cache_run.record("first-block-cache-0.5", case).trajectory
    assert cached.steps == STEPS and cached.final_rel_error > 0
    assert cached.drift[0] == 0.0  # the first step is always computed in full
    frame = cache_run.to_frame(full=False)
    assert frame.loc["fp32", "trajectory_rel_err"] == 0.0 and frame.loc["mag-cache-0.5", "trajectory_rel_err"] > 0
    fig = lab.plots.plot_trajectory_drift(cache_run)
    assert len(fig.axes[0].lines) == 2 and not lab.plots.layout_problems(fig)


def test_trajectory_between_checks_shapes():
    import torch

    a = torch.randn(4, 1, 8, 8)
    t = Trajectory.between(a * 1.1, a)
    assert t.final_rel_error == pytest.approx(0.1) and t.max_drift == pytest.approx(0.1)
    assert Trajectory.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    with pytest.raises(ValueError, match="shape"):
        Trajectory.between(a[:3], a)


def test_old_results_without_the_new_fields_still_load(tmp_path):
    rec = RunRecord("fp32", "c", 0, "ok", latency=Latency.from_values([1.0, 1.1]), peak_rss_mb=300.0,
                    rss_before_mb=200.0, weight_bytes={"transformer": 2**20}).to_dict()
    for name in ("trajectory", "cache_skips"):
        rec.pop(name)
    (tmp_path / "results.jsonl").write_text(json.dumps(rec) + "\n")
    cmp = Comparison.load(tmp_path, baseline="fp32")
    assert cmp.records[0].trajectory is None and cmp.records[0].cache_skips is None
    assert "trajectory_rel_err" not in cmp.to_frame()


def test_quality_gate_judges_random_weights_by_the_trajectory(cache_run):
    from dataclasses import replace

    from lab.quality import QualityThresholds, evaluate

    random = replace(cache_run, model="flux-arch")  # the same runs read as if the model had random weights
    assert random.random_weights
    loose, strict = (evaluate(random, QualityThresholds(trajectory_rel_err_max=m)) for m in (10.0, 1e-9))
    assert loose.passed and not strict.passed
    assert {i.judged_by for i in loose.images} == {"trajectory"}
    assert {i.judged_by for i in evaluate(cache_run).images} == {"ssim"}


def test_recommender_takes_a_cache_only_where_it_pays():
    from lab.presets import CACHE_PICK, recommend

    gpu = lab.RecipeEnv(device="cuda", cuda_capability=(9, 0), cuda_memory_gb=80.0)
    fast = recommend(gpu, "speed", model="tiny-flux")
    assert CACHE_PICK["cache_mixin"] in fast.recipe.split("+") and parse(fast.recipe)
    careful = recommend(gpu, "quality", model="tiny-flux")
    assert not caches.is_cache(parse(careful.recipe)) and any("no cache" in r for r in careful.reasons)
    few_steps = recommend(lab.RecipeEnv(device="cpu"), "speed", model="tiny-flux")  # the CPU branch takes 12 steps
    assert not caches.is_cache(parse(few_steps.recipe)) and any("12 steps" in r for r in few_steps.reasons)
