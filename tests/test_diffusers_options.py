"""Issue 19's diffusers options: attention backends, layerwise casting, group offload, load-time quantization
(quanto, GGUF) and LoRA hotswap on a compiled denoiser, each checked for what it really does."""

import pytest
import torch

from lab.denoiser import denoiser, model_kind
from lab.env import RecipeEnv
from lab.models import weight_bytes
from lab.prepare import prepare
from lab.recipes import catalog, parse
from lab.recipes.attention import backend_of, best_backend

CPU = RecipeEnv(device="cpu")
H100 = RecipeEnv(device="cuda", cuda_capability=(9, 0), packages=frozenset({"flash_attn", "flash_attn_3"}))


def _image(pipe, steps=2):
    with torch.no_grad():
        return pipe("a red circle on the left", num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                    output_type="pt").images


@pytest.fixture(scope="module")
def flux_base():
    return _image(prepare("tiny-flux", "", device="cpu").pipe)


def test_backends_refused_here_with_their_reason(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    why = catalog(CPU)["not_applicable"]
    assert why["attn-native"] == why["attn-math"] == why["attn-flex"] == ""
    assert "flash_attn is not installed" in why["attn-flash"]
    assert "sageattention is not installed" in why["attn-sage"]
    assert "compute capability >= 8.0" in why["attn-cudnn"] and "(this is cpu)" in why["attn-cudnn"]
    assert "HF_HUB_OFFLINE is set" in parse("attn-flash3-hub").check(H100)["attn-flash3-hub"]
    ampere = RecipeEnv(device="cuda", cuda_capability=(8, 0), packages=frozenset({"flash_attn_3"}))
    assert "compute capability >= 9.0 (this GPU is (8, 0))" in parse("attn-flash3").check(ampere)["attn-flash3"]
    assert best_backend(CPU) == "attn-native"
    assert best_backend(H100) == "attn-flash3"
    assert best_backend(RecipeEnv(device="cuda", cuda_capability=(9, 0))) == "attn-cudnn"


def test_backends_refused_on_a_unet_saying_they_would_do_nothing():
    why = parse("attn-flex").fits(model_kind("tiny"))["attn-flex"]
    assert "no effect on a UNet" in why and "sdpa or math-attention" in why
    assert parse("attn-flex").fits(model_kind("tiny-flux")) == {}


def test_a_cpu_backend_changes_the_dispatcher_and_the_output_stays_close(flux_base):
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    default = _AttentionBackendRegistry.get_active_backend()[0]
    pipe = prepare("tiny-flux", "attn-math", device="cpu").pipe
    assert backend_of(denoiser(pipe)) == "_native_math"
    assert _AttentionBackendRegistry.get_active_backend()[0] == default  # the process default is left alone
    assert (_image(pipe) - flux_base).abs().max() < 1e-3


def _fp8_elements(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.dtype == torch.float8_e4m3fn)


def test_layerwise_fp8_stores_a_quarter_of_fp32_and_half_of_bf16_per_cast_weight():
    base = prepare("tiny", "", device="cpu").pipe
    fp8 = prepare("tiny", "layerwise-fp8-denoiser", device="cpu").pipe
    n = _fp8_elements(fp8.unet)
    assert n > 0.9 * sum(p.numel() for p in fp8.unet.parameters())  # all but norms and the like
    # weight_bytes counts float8 storage as 1 byte: 3 bytes fewer than fp32 for every cast element
    assert weight_bytes(fp8)["unet"] == weight_bytes(base)["unet"] - 3 * n
    assert weight_bytes(fp8)["vae"] == weight_bytes(base)["vae"]  # other components untouched
    half = prepare("tiny", "bf16-denoiser", device="cpu").pipe
    fp8_bf16 = prepare("tiny", "layerwise-fp8-denoiser-bf16", device="cpu").pipe
    assert weight_bytes(fp8_bf16)["unet"] == weight_bytes(half)["unet"] - _fp8_elements(fp8_bf16.unet)
    # 8 steps: at 2 the tiny UNet's image swings with any rounding (bf16 alone moves it by 0.04 on average)
    reference = _image(base, steps=8)
    image = _image(fp8, steps=8)
    assert torch.isfinite(image).all()
    assert (image - reference).abs().mean() < 0.03  # measured 0.006
    assert torch.isfinite(_image(fp8_bf16)).all()


def test_layerwise_composes_after_a_precision_recipe(flux_base):
    pipe = prepare("tiny-flux", "bf16+layerwise-fp8-denoiser", device="cpu").pipe
    assert _fp8_elements(pipe.transformer) > 0
    assert (_image(pipe).float() - flux_base).abs().mean() < 0.05


def test_group_offload_refused_on_a_cpu_and_allowed_on_a_gpu():
    for name in ("group-offload-block", "group-offload-leaf-stream", "group-offload-disk"):
        prepared = prepare("tiny", name, device="cpu", strict=False)
        assert prepared.pipe is None and "nothing to offload" in prepared.skipped
        assert parse(name).check(H100) == {}
    with pytest.raises(Exception, match="both set offload"):
        parse("group-offload-block+model-cpu-offload")


def test_load_time_quanto_quantizes_while_loading():
    pipe = prepare("tiny", "load-quanto-denoiser-int8w", device="cpu").pipe
    kinds = {type(m).__name__ for m in pipe.unet.modules()}
    assert "QLinear" in kinds and "Linear" not in kinds
    assert torch.isfinite(_image(pipe)).all()
    refused = prepare("sd15-arch", "load-quanto-denoiser-int8w", device="cpu", strict=False)
    assert refused.pipe is None and "reads weights from disk" in refused.skipped
    with pytest.raises(Exception, match="both set quant:denoiser"):
        parse("load-quanto-denoiser-int8w+quanto-denoiser-int8w")


def test_gguf_round_trip_loads_and_generates_on_tiny_flux(tmp_path, monkeypatch, flux_base):
    import gguf

    from lab.loadtime import export_gguf, model_folder

    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    path = export_gguf(model_folder("tiny-flux"), "q8_0")
    assert path.is_relative_to(tmp_path)
    types = {t.tensor_type for t in gguf.GGUFReader(str(path)).tensors}
    assert gguf.GGMLQuantizationType.Q8_0 in types
    pipe = prepare("tiny-flux", "gguf-denoiser-q8_0", device="cpu").pipe
    assert any(type(m).__name__ == "GGUFLinear" for m in pipe.transformer.modules())
    assert sum(weight_bytes(pipe).values()) < 0.6 * 23_769_988  # tiny-flux's fp32 total, measured
    assert (_image(pipe) - flux_base).abs().max() < 0.05
    # the first-step fidelity feeds the latents in the dtype the transformer computes in, not its uint8 packing
    from lab.cases import Case
    from lab.fidelity import Fidelity, first_step_update

    case = Case("a red circle on the left", steps=2)
    reference = first_step_update(prepare("tiny-flux", "", device="cpu").pipe, case)
    assert Fidelity.between(first_step_update(pipe, case), reference).cosine > 0.999
    refused = parse("gguf-denoiser-q8_0").fits(model_kind("tiny"))
    assert "lab exports only a transformer" in refused["gguf-denoiser-q8_0"]


@pytest.mark.slow
def test_hotswap_swaps_adapters_without_recompiling():
    from lab.hotswap import compare_hotswap

    result = compare_hotswap("tiny", backend="eager")  # dynamo's guards and counters, without inductor's codegen
    assert result.hotswap_graphs == 0
    assert result.reload_graphs >= 1  # adapters of two ranks: a plain reload fails dynamo's guards
    assert result.swap_effect > 0.01
    assert result.hotswap_vs_reload < 1e-4
