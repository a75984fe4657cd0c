import numpy as np
import pytest

import lab
from lab import recipes
from lab.denoiser import model_kind
from lab.diagnosis import SUGGESTIONS
from lab.models import weight_bytes
from lab.env import RecipeEnv
from lab.recipes import parse

from .conftest import generate

CPU = RecipeEnv.detect("cpu")
COMPILE = {n for n in recipes.names() if n.startswith("compile-")}
TINY = model_kind("tiny")
# the older "unet" spelling of a recipe that also has a "denoiser" one: the same technique, tested once below
UNET_TWINS = {n for n in recipes.names() if "unet" in n and n.replace("unet", "denoiser") in recipes.names()}
# each exports the UNet to another runtime on its first call (seconds): tests/test_runtimes.py applies them (slow)
RUNTIMES = {n for n in recipes.names() if recipes.get(n).family == "runtime"}


def test_catalog_lists_every_recipe_with_its_needs():
    frame = recipes.catalog(CPU)
    assert {"family", "description", "needs", "not_applicable"} <= set(frame.columns)
    assert set(recipes.names()) <= set(frame.index)
    families = set(frame["family"])
    assert {"precision", "attention", "layout", "compile", "quantization", "scheduler", "memory"} <= families
    for name in ("fp32", "fp16", "bf16", "tf32", "sdpa", "math-attention", "attention-slicing", "xformers",
                 "fused-qkv", "channels-last", "compile-unet", "compile-unet-reduce-overhead",
                 "compile-unet-max-autotune", "compile-unet-frozen", "compile-unet-regional", "compile-vae",
                 "quanto-unet-int8w", "quanto-text-int4w", "quanto-vae-fp8w-fp8a", "quanto-unet-int8w-int8a",
                 "torchao-int8wo", "bnb-unet-4bit", "ddim", "euler", "euler-a", "dpmpp-2m-karras", "unipc", "lcm",
                 "model-cpu-offload", "sequential-cpu-offload", "vae-slicing", "vae-tiling"):
        assert name in frame.index, name


def test_every_suggested_recipe_exists():
    for rule, names in SUGGESTIONS.items():
        for name in names:
            assert recipes.get(name).name == name, (rule, name)


@pytest.mark.parametrize("name", sorted(set(recipes.names()) - COMPILE - UNET_TWINS - RUNTIMES))
def test_every_recipe_applies_to_tiny_or_says_why_not(name):
    recipe = recipes.get(name)
    reason = recipe.check(CPU) or recipe.fits(TINY)
    if reason:
        assert isinstance(reason, str) and len(reason) > 15
        return
    if recipe.load_fn is not None:  # load-time: loaded with it (tests/test_diffusers_options.py), never after
        pipe = lab.load_pipeline("tiny", device="cpu", recipe=name)
        with pytest.raises(lab.LabError, match="while the pipeline loads"):
            recipe.apply(lab.load_pipeline("tiny", device="cpu"))
        assert generate(pipe, steps=2).shape == (64, 64, 3)
        return
    pipe = lab.load_pipeline("tiny", device="cpu")
    cases = [lab.Case("a red circle", steps=2)]
    recipe.apply(pipe, cases)
    assert generate(pipe, steps=2).shape == (64, 64, 3)


@pytest.mark.parametrize("name", ["bf16-unet", "quanto-unet-int8w", "compile-unet-regional"])
def test_unet_spellings_are_their_denoiser_twins_on_a_unet_model(name):
    twin = recipes.get(name.replace("unet", "denoiser"))
    recipe = recipes.get(name)
    assert recipe.slots == twin.slots and recipe.fits(TINY) is None and recipe.apply_fn is not None
    if recipe.check(CPU) is None and "compile" not in name:
        images = [generate(parse(n).apply(lab.load_pipeline("tiny", device="cpu"))) for n in (name, twin.name)]
        assert np.array_equal(*images)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n in COMPILE - UNET_TWINS if recipes.get(n).check(CPU) is None))
def test_compile_recipes_apply_to_tiny(name):
    pipe = lab.load_pipeline("tiny", device="cpu")
    recipes.get(name).apply(pipe)
    first = generate(pipe, steps=2)
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, generate(pipe, steps=2))  # compiled graph is reused, results stable


def test_cpu_only_recipes_explain_themselves():
    assert "CPU memory" in recipes.get("model-cpu-offload").check(CPU)
    assert "CUDA" in recipes.get("xformers").check(CPU) or "not installed" in recipes.get("xformers").check(CPU)
    assert "8.0" in recipes.get("tf32").check(CPU)


def test_quanto_int8_cuts_unet_weight_bytes():
    pipe = lab.load_pipeline("tiny", device="cpu")
    before = weight_bytes(pipe)
    parse("quanto-unet-int8w").apply(pipe)
    after = weight_bytes(pipe)
    assert before["unet"] / after["unet"] >= 3.5
    assert weight_bytes(parse("quanto-denoiser-int8w").apply(lab.load_pipeline("tiny", device="cpu"))) == after
    assert after["vae"] == before["vae"] and after["text_encoder"] == before["text_encoder"]


def test_per_component_precision_mixes_dtypes():
    pipe = lab.load_pipeline("tiny", device="cpu")
    parse("bf16-unet+fp16-text").apply(pipe)
    assert str(pipe.unet.dtype) == "torch.bfloat16" and str(pipe.vae.dtype) == "torch.float32"
    assert str(pipe.text_encoder.dtype) == "torch.float16"
    assert generate(pipe).shape == (64, 64, 3)


def test_prompt_embedding_cache_hits_and_keeps_the_image():
    plain = lab.load_pipeline("tiny", device="cpu")
    cached = parse("cache-prompt-embeds").apply(lab.load_pipeline("tiny", device="cpu"))
    images = [generate(cached, prompt="a blue square") for _ in range(3)]
    assert cached.lab_prompt_cache_misses == 1 and cached.lab_prompt_cache_hits == 2
    assert all(np.array_equal(images[0], im) for im in images)
    assert np.array_equal(images[0], generate(plain, prompt="a blue square"))


def test_steps_and_guidance_are_parametric():
    plan = parse("steps-12+guidance-3.5+dpmpp-2m-karras")
    assert plan.case_overrides() == {"steps": 12, "guidance": 3.5}
    with pytest.raises(lab.LabError, match="steps must be >= 1"):
        parse("steps-0")


def test_application_order_is_fixed():
    plan = parse("compile-unet+quanto-unet-int8w+bf16+fused-qkv")
    assert [r.name for r in plan.recipes] == ["bf16", "fused-qkv", "quanto-unet-int8w", "compile-unet"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("bf16+sdpa+quanto-unet-int8", "unknown recipe 'quanto-unet-int8'.*quanto-unet-int8w"),
        ("bf16+fp16", "cannot combine 'bf16' and 'fp16': both set dtype:text_encoder"),
        ("bf16+fp16-unet", "both set dtype:denoiser"),
        ("quanto-unet-int8w+quanto-denoiser-int4w", "both set quant:denoiser"),
        ("sequential-cpu-offload+compile-unet", "cannot be traced|cannot trace"),
        ("fused-qkv+attention-slicing", "fused SDPA"),
        ("sdpa+math-attention", "both set attention"),
        ("euler+ddim", "both set scheduler"),
        ("bf16+bf16", "twice"),
        ("bf16++sdpa", "empty part"),
        ("", "non-empty"),
    ],
)
def test_impossible_or_unknown_compositions_are_refused(text, message):
    with pytest.raises(lab.LabError, match=message):
        parse(text)
