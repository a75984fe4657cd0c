"""Issue 'advance': cache, adaptive policy, OOM fallback, hires fix, negative prompts, LoRA,
hardware plan, mixed-precision search and the widgets workbench."""

import json
import os

import numpy as np
import pytest

import lab
from lab.cache import CacheKey, ResultCache
from lab.env import RecipeEnv

from .conftest import generate

KEY = CacheKey(model="tiny", prompt="a red circle", seed=0, steps=2, guidance=7.5, height=64, width=64,
               scheduler="PNDMScheduler")


# -- result cache --------------------------------------------------------------------------------------
def test_cache_hits_after_a_miss_and_returns_the_same_image(tiny_pipe, tmp_path):
    cache = ResultCache(tmp_path)
    case = lab.Case("a red circle", steps=2)
    first, hit1 = cache.generate(tiny_pipe, case)
    second, hit2 = cache.generate(tiny_pipe, case)
    assert (hit1, hit2) == (False, True) and np.array_equal(np.asarray(first), np.asarray(second))
    assert (cache.stats.hits, cache.stats.misses, cache.stats.puts) == (1, 1, 1) and cache.stats.hit_rate == 0.5
    _, hit3 = cache.generate(tiny_pipe, case.with_overrides(negative_prompt="blurry"))
    assert not hit3  # the negative prompt is part of the key


def test_cache_key_covers_every_parameter():
    import dataclasses

    digests = {KEY.digest()}
    for field, value in [("model", "other"), ("prompt", "x"), ("seed", 1), ("steps", 3), ("guidance", 5.0),
                         ("height", 128), ("width", 128), ("scheduler", "DDIM"), ("recipe", "bf16"),
                         ("negative_prompt", "blurry"), ("revision", "abc")]:
        digests.add(dataclasses.replace(KEY, **{field: value}).digest())
    assert len(digests) == 12


def test_cache_evicts_least_recently_used(tmp_path):
    from PIL import Image

    cache = ResultCache(tmp_path, max_entries=2)
    keys = [CacheKey("m", f"p{i}", 0, 1, 1.0, 8, 8, "s") for i in range(3)]
    for i, key in enumerate(keys[:2]):
        cache.put(key, Image.new("RGB", (8, 8), (i, 0, 0)))
        os.utime(tmp_path / f"{key.digest()}.json", (1000 + i, 1000 + i))
    assert cache.get(keys[0]) is not None  # touching p0 makes p1 the least recently used
    cache.put(keys[2], Image.new("RGB", (8, 8)))
    assert len(cache) == 2 and cache.stats.evictions == 1
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is not None


def test_a_corrupt_entry_is_a_miss_and_is_replaced(tmp_path):
    from PIL import Image

    cache = ResultCache(tmp_path)
    cache.put(KEY, Image.new("RGB", (8, 8)))
    (tmp_path / f"{KEY.digest()}.png").write_bytes(b"not a png")
    assert cache.get(KEY) is None and cache.stats.corrupt == 1
    cache.put(KEY, Image.new("RGB", (8, 8), (9, 9, 9)))
    assert cache.get(KEY).getpixel((0, 0)) == (9, 9, 9)
    json.loads((tmp_path / f"{KEY.digest()}.json").read_text())  # metadata is JSON, never pickle
    assert not list(tmp_path.glob(".tmp-*"))  # nothing half-written left behind


def test_cache_directory_must_be_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(lab.LabError, match="not writable"):
        ResultCache(blocker / "cache")
    with pytest.raises(lab.LabError, match="max_entries"):
        ResultCache(tmp_path, max_entries=0)


# -- adaptive policy and fallback ------------------------------------------------------------------------
def test_complexity_orders_prompts():
    c = lab.prompt_complexity
    assert c("cat") < c("a red circle on the left") < c(
        "a red circle on the left and a blue square on the right, a green star above them, white background, "
        "with soft shadows under each shape and a yellow border around the whole scene")
    assert 0.0 <= c("") <= c("x " * 100) <= 1.0


def test_policy_adapts_steps_guidance_and_size():
    policy = lab.AdaptivePolicy(min_steps=10, max_steps=30, bytes_per_pixel=1000)
    simple = policy.decide(lab.Case("cat"), native_size=512, weight_bytes=10**8, available_bytes=10**10)
    rich = policy.decide(lab.Case("a red circle on the left and a blue square on the right, a green star "
                                  "above them, with shadows under each"), native_size=512, weight_bytes=10**8,
                         available_bytes=10**10)
    assert simple.steps < rich.steps and simple.guidance < rich.guidance and simple.height == 512
    tight = policy.decide(lab.Case("cat"), native_size=512, weight_bytes=10**8, available_bytes=10**8 + 1000 * 300**2)
    assert tight.height == tight.width == 256  # 512 -> 448 -> ... the first size whose activations fit 300² px


def test_impossible_memory_budget_is_a_clear_error():
    policy = lab.AdaptivePolicy()
    with pytest.raises(lab.LabError, match="weights alone need"):
        policy.decide(lab.Case("cat"), native_size=512, weight_bytes=2 * 2**30, available_bytes=2**30)
    with pytest.raises(lab.LabError, match="even 256x256"):
        policy.decide(lab.Case("cat"), native_size=512, weight_bytes=2**30, available_bytes=2**30 + 10)
    with pytest.raises(lab.LabError, match="min_steps"):
        lab.AdaptivePolicy(min_steps=20, max_steps=10)


def test_policy_evaluation_reports_time_saved_and_quality(tiny_pipe):
    from lab.adaptive import evaluate_policy

    cases = [lab.Case("cat"), lab.Case("a red circle on the left and a blue square on the right, with a star")]
    # 20 steps against ~3: a margin that one timed call of a few milliseconds per step cannot hide.
    frame = evaluate_policy(tiny_pipe, cases, lab.AdaptivePolicy(min_steps=2, max_steps=20, min_size=32),
                            available_bytes=2**34)
    assert list(frame["fixed_steps"]) == [20, 20]
    assert frame["adaptive_steps"].iloc[0] < frame["adaptive_steps"].iloc[1]
    assert frame["time_saved_pct"].iloc[0] > 0 and frame["ssim"].between(-1, 1).all()


def test_adapt_uses_the_pipeline(tiny_pipe):
    case = lab.adapt(tiny_pipe, lab.Case("cat"), lab.AdaptivePolicy(min_size=32), available_bytes=2**34)
    assert case.height == 64 and case.steps == 10


def test_fallback_degrades_until_it_fits():
    import torch

    pipe = lab.load_pipeline("tiny-random", device="cpu")  # latents at half the pixel size

    def fake_oom(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        if sample.shape[-1] > 24:  # pretend only latents up to 24x24 fit
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    pipe.unet.register_forward_pre_hook(fake_oom, with_kwargs=True)
    image, result = lab.generate_with_fallback(pipe, lab.Case("a red circle", steps=1), min_size=16)
    assert result.actions == ["vae-tiling", "attention-slicing", "resolution 64 -> 48"]
    assert image.size == (48, 48) and len(result.errors) == 3
    assert pipe.vae.use_tiling


def test_memory_budget_counts_new_tensors_not_views_and_raises_a_real_oom():
    import torch

    from lab.fallback import memory_budget

    weight = torch.zeros(256, 1024)  # 1 MiB made before: not the call's
    with memory_budget() as mode:
        view = weight.t()
        a = torch.ones(512, 1024)  # 2 MiB
        b = a * 2  # 2 MiB more, both alive
        del a, b
        c = torch.ones(256, 1024)  # 1 MiB after the 4 MiB were freed
    assert mode.peak == 4 * 2**20 and mode.live == 2**20 and view.shape == (1024, 256)
    del c
    with pytest.raises(torch.OutOfMemoryError, match="budget"), memory_budget(3.0):
        keep = [torch.ones(256, 1024) for _ in range(4)]  # noqa: F841 - held: the fourth MiB is over


def test_a_memory_budget_makes_the_fallback_really_degrade(tiny_pipe):
    from lab.fallback import measure_working_set_mb

    case = lab.Case("a red circle on the left, white background", steps=1)
    need = measure_working_set_mb(tiny_pipe, case)
    assert need > 0.1
    pipe = lab.load_pipeline("tiny", device="cpu")  # fallback actions change the pipeline: a fresh one
    image, result = lab.generate_with_fallback(pipe, case, min_size=32, memory_budget_mb=0.6 * need)
    assert result.actions[:2] == ["vae-tiling", "attention-slicing"] and result.actions[2].startswith("resolution 64 ->")
    assert all("lab memory budget" in e for e in result.errors) and len(result.errors) == len(result.actions)
    assert image.size[0] < 64 and result.case.height == image.size[0]
    assert result.peak_mb[-1] <= 0.6 * need and len(result.peak_mb) == len(result.actions) + 1
    _, roomy = lab.generate_with_fallback(lab.load_pipeline("tiny", device="cpu"), case, memory_budget_mb=2 * need)
    assert roomy.actions == [] and roomy.peak_mb[0] == pytest.approx(need, rel=0.05)


def test_fallback_reraises_other_errors_and_the_final_oom():
    import torch

    pipe = lab.load_pipeline("tiny", device="cpu")
    pipe.unet.register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(torch.OutOfMemoryError("always")))
    with pytest.raises(torch.OutOfMemoryError):
        lab.generate_with_fallback(pipe, lab.Case("x", steps=1), min_size=48)


# -- hires fix and negative prompts -------------------------------------------------------------------------
def test_hires_fix_times_each_stage(tiny_pipe):
    base, final, times = lab.hires_fix(tiny_pipe, lab.Case("a red circle", steps=2), scale=2.0, strength=0.5)
    assert base.size == (64, 64) and final.size == (128, 128)
    assert times.base_s > 0 and times.upscale_s >= 0 and times.refine_s > 0
    assert times.total_s == pytest.approx(times.base_s + times.upscale_s + times.refine_s)
    with pytest.raises(lab.LabError, match="scale"):
        lab.hires_fix(tiny_pipe, lab.Case("x", steps=1), scale=1.0)


def test_negative_prompt_templates():
    from lab.cases import negative_styles

    assert {"general", "photo", "anime"} <= set(negative_styles())
    case = lab.with_negative(lab.Case("a cat"), "photo", extra="cropped")
    assert case.negative_prompt.startswith("painting") and case.negative_prompt.endswith("cropped")
    assert case.pipeline_kwargs()["negative_prompt"] == case.negative_prompt
    with pytest.raises(lab.LabError, match="unknown negative-prompt style 'fotos'"):
        lab.negative_prompt("fotos")


# -- LoRA ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_file(tmp_path_factory, tiny_pipe):
    return lab.lora.make_lora(tiny_pipe, tmp_path_factory.mktemp("lora") / "tiny_lora.safetensors")


def test_lora_changes_the_image_with_its_scale_and_fuses(lora_file):
    base = generate(lab.load_pipeline("tiny", device="cpu"))
    pipe = lab.load_pipeline("tiny", device="cpu")
    lab.lora.load_lora(pipe, lora_file, scale=1.0)
    with_lora = generate(pipe)
    assert not np.array_equal(base, with_lora)
    pipe.set_adapters(["lab"], adapter_weights=[0.0])
    assert np.abs(generate(pipe).astype(int) - base.astype(int)).max() <= 1  # scale 0: the base model
    pipe.set_adapters(["lab"], adapter_weights=[1.0])
    lab.lora.fuse(pipe)
    assert np.abs(generate(pipe).astype(int) - with_lora.astype(int)).max() <= 2  # fused == unfused
    lab.lora.unfuse(pipe)
    assert np.abs(generate(pipe).astype(int) - with_lora.astype(int)).max() <= 2


@pytest.mark.parametrize("problem", ["missing", "not-safetensors", "other-architecture"])
def test_bad_lora_files_are_clear_errors_and_leave_the_pipeline_alone(problem, tmp_path, lora_file):
    pipe = lab.load_pipeline("tiny", device="cpu")
    before = generate(pipe)
    if problem == "missing":
        path, match = tmp_path / "nope.safetensors", "does not exist"
    elif problem == "not-safetensors":
        path, match = tmp_path / "fake.safetensors", "not a readable safetensors"
        path.write_bytes(b"PK\x03\x04 this is a zip, not safetensors")
    else:
        xl = lab.load_pipeline("tiny-sdxl", device="cpu")
        path, match = lab.lora.make_lora(xl, tmp_path / "xl.safetensors"), "another architecture"
    with pytest.raises(lab.LabError, match=match):
        lab.lora.load_lora(pipe, path)
    assert np.array_equal(generate(pipe), before)


# -- hardware plan, mixed precision, workbench ---------------------------------------------------------------
def test_hardware_plan_decides_with_reasons(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="lab.hardware"):
        cpu = lab.hardware_plan(RecipeEnv("cpu", cpu_flags=("amx_bf16",)))
    assert cpu.precision == "bf16" and cpu.compile_mode == "default" and "compile-denoiser" in cpu.recipe
    assert any("hardware plan" in r.message for r in caplog.records)
    old_cpu = lab.hardware_plan(RecipeEnv("cpu", cpu_flags=("avx2",)))
    assert old_cpu.precision == "fp32"
    h100 = lab.hardware_plan(RecipeEnv("cuda", cuda_capability=(9, 0), cuda_memory_gb=80))
    assert h100.precision == "bf16" and h100.compile_mode == "reduce-overhead" and "tf32" in h100.recipe
    assert "compile-denoiser-reduce-overhead" in h100.recipe and any("first call" in c for c in h100.costs)
    tuned = lab.hardware_plan(RecipeEnv("cuda", cuda_capability=(9, 0), cuda_memory_gb=80), max_autotune=True)
    assert "compile-denoiser-max-autotune" in tuned.recipe and any("4 min" in c for c in tuned.costs)
    t4 = lab.hardware_plan(RecipeEnv("cuda", cuda_capability=(7, 5), cuda_memory_gb=16))
    assert t4.precision == "fp16" and "tf32" not in t4.recipe
    small = lab.hardware_plan(RecipeEnv("cuda", cuda_capability=(8, 6), cuda_memory_gb=8), model_gb=7.0)
    assert "model-cpu-offload" in small.recipe and small.compile_mode is None
    for plan in (cpu, old_cpu, h100, t4, small):
        lab.recipes.parse(plan.recipe)
        assert plan.reasons


def test_mixed_precision_search_returns_a_pareto_set(tmp_path):
    from lab.mixed import mixed_plans

    plans = mixed_plans({"text": ("fp32-text",), "unet": ("fp32-unet", "bf16-unet", "quanto-unet-int8w"),
                         "vae": ("bf16-vae",)})
    assert plans == ["fp32-text+fp32-unet+bf16-vae", "fp32-text+bf16-unet+bf16-vae",
                     "fp32-text+quanto-unet-int8w+bf16-vae"]
    cmp, front = lab.search_mixed_precision("tiny", lab.Case("a red circle", steps=2), plans=plans, out=str(tmp_path),
                                            repeats=1, progress=False)
    assert len(cmp.to_frame()) == 4 and 1 <= len(front) <= 4
    assert list(front.columns[:3]) == ["latency_s", "peak_mem_mb", "ssim"]
    frame = cmp.to_frame()
    for name in front.index:  # nothing in the set is beaten on all three objectives
        row = frame.loc[name]
        assert not any((frame["latency_s"] < row["latency_s"]) & (frame["peak_mem_mb"] < row["peak_mem_mb"])
                       & (frame["ssim"] > row["ssim"]))


def test_workbench_displays_itself_with_a_prompt_tiny_can_draw():
    wb = lab.widgets.Workbench(models=("tiny", "sd15-arch"), device="cpu")
    bundle = wb._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == wb.panel.model_id
    assert wb.steps.value == 20 and lab.shapes.is_shape_caption(wb.prompt.value)
    assert wb.size.style.description_width == "initial"
    wb.model.value = "sd15-arch"  # a random-weight model: a free-form prompt
    assert not lab.shapes.is_shape_caption(wb.prompt.value)


def test_workbench_runs_when_clicked():
    wb = lab.widgets.Workbench(models=("tiny",), device="cpu", repeats=1)
    wb.recipes.value = ("bf16", "channels-last")
    wb.run_button.click()  # the defaults: a held-out shape scene, 20 steps
    assert wb.error is None, wb.error
    assert list(wb.result.index) == ["fp32", "bf16+channels-last"] and wb.result.loc["fp32", "speedup"] == 1.0
    assert wb.result.loc["fp32", "steps"] == 20 and wb.result.loc["fp32", "adherence"] == 1.0
    assert wb.result.loc["bf16+channels-last", "speedup"] == pytest.approx(
        wb.result.loc["fp32", "median_s"] / wb.result.loc["bf16+channels-last", "median_s"])
    assert set(wb.images) == {"fp32", "bf16+channels-last"} and wb.images["fp32"].size == (64, 64)
    assert wb.progress.value == wb.progress.max and "done" in wb.status.value
    assert wb.table_out.outputs and wb.images_out.outputs and wb.plot_out.outputs
    table = wb.table_out.outputs[0]["data"]["text/plain"]
    assert "bf16+channels-last" in table and "median_s" in table
    # the stage plot holds both, labelled; both figures reach the outputs as PNGs
    stages = wb.figures["stages"].axes[0]
    assert [t.get_text() for t in stages.get_yticklabels()] == ["bf16+channels-last", "fp32"]
    assert lab.plots.layout_problems(wb.figures["stages"]) == []
    assert all("image/png" in out.outputs[0]["data"] for out in (wb.images_out, wb.plot_out))

    wb.recipes.value = ("bf16", "fp16")  # an error clears everything the last run showed
    wb.run_button.click()
    assert "cannot combine" in wb.error and "cannot combine" in wb.status.value
    assert wb.result is None and not wb.images
    assert not (wb.table_out.outputs or wb.images_out.outputs or wb.plot_out.outputs)


def test_workbench_says_why_a_recipe_cannot_apply():
    wb = lab.widgets.Workbench(models=("tiny",), device="cpu", repeats=1, steps=3)
    wb.recipes.value = ("model-cpu-offload",)  # needs CUDA: the reason, not a misleading run
    wb.run_button.click()
    assert wb.error and "cannot apply here" in wb.error and wb.result is None


def test_fallback_takeaway_judges_the_picture_not_the_call():
    import numpy as np
    from PIL import Image

    from lab import shapes, takeaways
    from lab.fallback import FallbackResult

    prompt = "a red circle on the left, white background"
    drawn = Image.fromarray(shapes.render(shapes.parse_caption(prompt), np.random.default_rng(0)))
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    result = FallbackResult(case=lab.Case(prompt, height=48, width=48), actions=["vae-tiling", "resolution 64 -> 48"],
                            errors=["oom", "oom"], budget_mb=1.0)
    lost = takeaways.fallback(result, noise, reference=drawn)
    assert "The picture was lost" in lost and "against 1.00 without the budget" in lost
    kept = takeaways.fallback(result, drawn, reference=drawn)
    assert "The picture survived: adherence 1.00" in kept
    assert "No detector scores this prompt" in takeaways.fallback(
        FallbackResult(case=lab.Case("an astronaut", height=48), actions=["vae-tiling"], errors=["oom"]), noise)
