"""CPU runtime recipes (OpenVINO, ONNX Runtime): catalog, refusals, images against fp32; the measured CPU branch."""

import importlib.util

import pytest

from lab._checks import LabError
from lab.env import RecipeEnv
from lab.experiments import Comparison, RunRecord
from lab.fidelity import Fidelity
from lab.presets import measured_pick, recommend
from lab.recipes import get, parse
from lab.recipes.runtimes import RUNTIMES
from lab.stats import Latency

ALL = frozenset({"openvino", "onnxruntime", "onnx"})
CPU = RecipeEnv("cpu", packages=ALL, cpu_flags=("avx512f", "amx_bf16"))


def test_runtime_recipes_are_in_the_catalog_and_apply_last_but_compile():
    for name in RUNTIMES:
        assert get(name).family == "runtime" and get(name).check(CPU) is None
    plan = parse("openvino-denoiser+channels-last+bf16")
    assert [r.name for r in plan.recipes] == ["bf16", "channels-last", "openvino-denoiser"]


def test_refused_with_the_reason():
    gpu = RecipeEnv("cuda", cuda_capability=(9, 0), packages=ALL)
    assert "GPU" in get("openvino-denoiser").check(gpu)
    bare = RecipeEnv("cpu")
    assert "openvino is not installed" in get("openvino-denoiser-f32").check(bare)
    assert "onnxruntime is not installed" in get("onnxruntime-denoiser").check(bare)
    assert "onnx is not installed" in get("onnxruntime-denoiser").check(RecipeEnv("cpu", packages=frozenset({"onnxruntime"})))
    from lab.denoiser import model_kind

    assert "transformer" in parse("openvino-denoiser").fits(model_kind("tiny-flux"))["openvino-denoiser"]
    assert parse("onnxruntime-denoiser").fits(model_kind("tiny")) == {}
    for other in ("compile-denoiser", "quanto-denoiser-int8w", "onnxruntime-denoiser"):
        with pytest.raises(LabError, match="cannot combine"):
            parse(f"openvino-denoiser+{other}")


def record(recipe, seconds, rel_error=None, status="ok"):
    if status != "ok":
        return RunRecord(recipe, "astronaut", 0, status, error="openvino is not installed")
    return RunRecord(recipe, "astronaut", 0, "ok", latency=Latency.from_values([seconds] * 3), peak_rss_mb=3000.0,
                     rss_before_mb=2500.0, weight_bytes={"unet": 2**30},
                     fidelity=Fidelity(cosine=1 - rel_error ** 2, rel_error=rel_error) if rel_error is not None
                     else None, fidelity_note=None if rel_error is not None else "changes the scheduler")


# the shape of issue 21's measurement: OpenVINO's default (bf16) fastest, fp32 OpenVINO slower than lab's rung
MEASURED = Comparison(model="sd15-arch", baseline="fp32", out="runs/cpu-runtimes", records=[
    record("fp32", 9.2), record("bf16+sdpa+channels-last", 3.4, 0.011), record("openvino-denoiser", 2.6, 0.023),
    record("openvino-denoiser-f32", 4.1, 0.005), record("onnxruntime-denoiser", 7.0, 0.0001),
    record("bf16+dpmpp-2m-karras+steps-2", 1.5)])


def test_measured_pick_is_the_fastest_within_the_bound():
    pick, lines = measured_pick(MEASURED)
    assert pick == "openvino-denoiser"
    assert any("steps-2" in line and "quality unknown" in line for line in lines)  # faster, but unverifiable
    assert measured_pick(MEASURED, max_rel_error=0.02)[0] == "bf16+sdpa+channels-last"
    assert measured_pick(MEASURED, max_rel_error=0.001)[0] == "onnxruntime-denoiser"


def test_recommend_follows_the_measurement_on_cpu():
    rec = recommend(CPU, "balance", measured=MEASURED)
    assert rec.recipe == "openvino-denoiser" and rec.not_applicable == {}
    assert any("measured" in r for r in rec.reasons) and any("2.600 s" in r for r in rec.reasons)
    unmeasured = recommend(CPU, "balance", measured=Comparison(model="sd15-arch", baseline="fp32", out="x", records=[
        record("openvino-denoiser", 0, status="skipped")]))
    assert unmeasured.recipe == recommend(CPU, "balance").recipe  # nothing ran: the fixed rule, said so
    gpu = RecipeEnv("cuda", cuda_capability=(9, 0), cuda_memory_gb=80.0)
    assert "openvino" not in recommend(gpu, "balance", measured=MEASURED).recipe  # the GPU branch is unchanged


def _images_against_fp32(recipe):
    import numpy as np
    import torch

    import lab
    from lab.cases import load_prompts
    from lab.fidelity import first_step_update
    from lab.quality import ssim

    case = load_prompts("shapes")[0].with_overrides(steps=4)

    def run(pipe):
        image = pipe(generator=torch.Generator("cpu").manual_seed(0), **case.pipeline_kwargs()).images[0]
        return image, first_step_update(pipe, case)

    ref_image, ref_update = run(lab.load_pipeline("tiny", device="cpu"))
    pipe = lab.load_pipeline("tiny", device="cpu", recipe=recipe)
    image, update = run(pipe)
    assert type(pipe.unet).__name__ == "RuntimeDenoiser" and len(pipe.unet.export_s) == 1
    assert sum(p.numel() for p in pipe.unet.parameters()) == 0  # torch weights released after the export
    return ssim(image, ref_image), Fidelity.between(update, ref_update), np.asarray(image)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
@pytest.mark.parametrize("recipe,rel_max", [("openvino-denoiser", 0.05), ("openvino-denoiser-f32", 1e-3)])
def test_openvino_images_close_to_fp32(recipe, rel_max):
    quality, fidelity, _ = _images_against_fp32(recipe)
    assert fidelity.rel_error < rel_max and quality > 0.95


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
                    reason="onnxruntime or onnx is not installed")
def test_onnxruntime_images_close_to_fp32():
    quality, fidelity, _ = _images_against_fp32("onnxruntime-denoiser")
    assert fidelity.rel_error < 1e-3 and quality > 0.99


def test_takeaways_say_what_ran_and_what_was_picked():
    from lab import takeaways

    with_skip = Comparison(model="sd15-arch", baseline="fp32", out="x", records=[
        *MEASURED.records, record("onnxruntime-denoiser-x", 0, status="skipped")])
    text = takeaways.runtimes(with_skip, recommend(CPU, measured=with_skip))
    assert "**`openvino-denoiser`**" in text and "Not measured here" in text and "not installed" in text


def test_wrapper_exports_once_per_shape_and_releases_the_weights():
    import torch

    import lab
    from lab.runtimes import Backend, install

    class Eager(Backend):  # runs the traced module with torch: the wrapper's bookkeeping, no runtime needed
        def build(self, module, example, release):
            release()  # as the real backends do once the runtime holds its own copy (here: the closure's)

            def run(inputs):
                with torch.no_grad():
                    return module(*(torch.from_numpy(x) for x in inputs)).numpy()
            return run

    pipe = lab.load_pipeline("tiny-random", device="cpu")
    reference = pipe.unet
    sample, states = torch.randn(2, 4, 8, 8), torch.randn(2, 77, reference.config.cross_attention_dim)
    with torch.no_grad():
        expected = reference(sample, 10, encoder_hidden_states=states).sample
    wrapper = install(pipe, Eager("eager"), keep_weights=True)
    assert pipe.unet is wrapper and wrapper.config.in_channels == 4
    out = wrapper(sample, torch.tensor(10), encoder_hidden_states=states, return_dict=False)[0]
    assert torch.allclose(out, expected, atol=1e-5)
    wrapper(sample[:1], torch.tensor(10), encoder_hidden_states=states[:1])
    assert len(wrapper.export_s) == 2  # another batch: exported again from the kept weights

    released = install(lab.load_pipeline("tiny-random", device="cpu"), Eager("eager"))
    released(sample, torch.tensor(10), encoder_hidden_states=states)
    assert sum(p.numel() for p in released.parameters()) == 0
    with pytest.raises(RuntimeError, match="keep_weights"):
        released(sample[:1], torch.tensor(10), encoder_hidden_states=states[:1])
