"""The embedded transformer (DiT) models: tiny-flux, flux-arch, sd35m-arch."""

import numpy as np
import pytest
import torch

import lab
from lab import models
from lab.models import EMBEDDED, build_embedded, check_fits, default_size, memory_need, parameter_counts

from .conftest import generate

GIB = 2**30


@pytest.fixture(scope="module")
def flux_meta():
    return build_embedded("flux-arch", empty=True)


@pytest.fixture(scope="module")
def sd35m_meta():
    return build_embedded("sd35m-arch", empty=True)


@pytest.fixture(scope="module")
def tiny_flux():
    return lab.load_pipeline("tiny-flux", device="cpu")


def test_flux_arch_is_flux1_dev_to_the_parameter(flux_meta):
    from diffusers import FluxPipeline, FluxTransformer2DModel

    assert isinstance(flux_meta, FluxPipeline) and isinstance(flux_meta.transformer, FluxTransformer2DModel)
    assert flux_meta.transformer.config.guidance_embeds
    counts = parameter_counts(flux_meta)
    assert counts["transformer"] == 11_901_408_320
    assert counts == dict(EMBEDDED["flux-arch"].published_params)
    assert flux_meta.vae.config.latent_channels == 16 and flux_meta.transformer.config.in_channels == 64
    assert default_size(flux_meta) == 1024 and flux_meta.default_sample_size == 128  # FLUX.1's own default


def test_sd35m_arch_matches_the_published_config_count(sd35m_meta):
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    assert isinstance(sd35m_meta, StableDiffusion3Pipeline)
    assert isinstance(sd35m_meta.transformer, SD3Transformer2DModel)
    assert list(sd35m_meta.transformer.config.dual_attention_layers) == list(range(13))  # MMDiT-X
    counts = parameter_counts(sd35m_meta)
    assert counts == dict(EMBEDDED["sd35m-arch"].published_params)
    # KerasHub publishes 3 371 793 763 for CLIP-L + CLIP-G + MMDiT-X + VAE; it stores the sin-cos position
    # table that diffusers keeps as a buffer.
    pos = sd35m_meta.transformer.pos_embed.pos_embed.numel()
    assert sum(counts[c] for c in ("text_encoder", "text_encoder_2", "transformer", "vae")) + pos == 3_371_793_763
    assert default_size(sd35m_meta) == 1024


def test_t5_xxl_counts_its_token_embedding_once(flux_meta):
    t5 = flux_meta.text_encoder_2
    assert t5.shared.weight is t5.encoder.embed_tokens.weight
    assert parameter_counts(flux_meta)["text_encoder_2"] == 4_762_310_656


def test_tokenizers_load_offline_and_fit_their_encoders(flux_meta, sd35m_meta, tiny_flux):
    for tok, enc in ((flux_meta.tokenizer_2, flux_meta.text_encoder_2), (sd35m_meta.tokenizer_3, None),
                     (tiny_flux.tokenizer_2, tiny_flux.text_encoder_2)):
        assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
        assert tok.model_max_length == 512
        ids = tok("a red circle on the left, white background").input_ids
        assert tok.convert_ids_to_tokens(ids)[:3] == ["▁a", "▁red", "▁circle"] and ids[-1] == 1
        if enc is not None:
            assert len(tok) <= enc.config.vocab_size
    assert len(flux_meta.tokenizer_2) == 32_100  # T5-XXL's: 32 000 pieces and 100 sentinels
    assert len(tiny_flux.tokenizer_2) == tiny_flux.text_encoder_2.config.vocab_size
    for pipe in (flux_meta, sd35m_meta):
        assert len(pipe.tokenizer) == 49_408 and pipe.tokenizer.model_max_length == 77
    padded = flux_meta.tokenizer_2("a red circle", padding="max_length", max_length=512).input_ids
    assert len(padded) == 512 and padded[-1] == 0


def test_tiny_flux_makes_a_64px_image_on_the_transformer(tiny_flux):
    from diffusers import FluxPipeline

    assert isinstance(tiny_flux, FluxPipeline) and getattr(tiny_flux, "unet", None) is None
    assert default_size(tiny_flux) == 64
    image = generate(tiny_flux)  # no size given: the model's own 64², not FluxPipeline's 128 latent pixels
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and image.std() > 0
    assert generate(tiny_flux, height=96, width=32).shape == (96, 32, 3)
    assert np.array_equal(generate(tiny_flux, seed=3), generate(tiny_flux, seed=3))


def test_tiny_flux_is_small():
    need = memory_need("tiny-flux")
    assert need.weights <= 25 * 10**6


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_flux_arch_is_refused_before_loading_on_a_24_gib_machine(monkeypatch, dtype):
    built = []
    real = models._build_component
    monkeypatch.setattr(models, "available_memory", lambda device: 20 * GIB)
    monkeypatch.setattr(models, "_build_component",
                        lambda *a: built.append((a[1], torch.get_default_device())) or real(*a))
    with pytest.raises(models.ModelUnavailableError) as err:
        lab.load_pipeline("flux-arch", device="cpu", dtype=dtype)
    need = memory_need("flux-arch", dtype)
    message = str(err.value)
    assert f"needs {need.total:,} bytes" in message and f"{20 * GIB:,} bytes" in message and dtype in message
    assert need.parameters > 16.8e9  # 11.9 B transformer + 4.76 B T5-XXL + CLIP-L + VAE
    assert need.weights == need.parameters * (4 if dtype == "fp32" else 2)
    weights = [d for name, d in built if name != "scheduler" and not name.startswith("tokenizer")]
    assert all(d.type == "meta" for d in weights)  # meta-device builds at most (counts are cached)


def test_sd35m_arch_drops_t5_only_when_the_whole_model_does_not_fit(monkeypatch):
    monkeypatch.setattr(models, "available_memory", lambda device: 64 * GIB)
    assert check_fits("sd35m-arch", "bf16") == ()
    monkeypatch.setattr(models, "available_memory", lambda device: 20 * GIB)
    assert check_fits("sd35m-arch", "fp32") == ("text_encoder_3",)
    assert check_fits("sd35m-arch", "bf16") == ("text_encoder_3",)
    monkeypatch.setattr(models, "available_memory", lambda device: 4 * GIB)
    with pytest.raises(models.ModelUnavailableError, match="even without text_encoder_3"):
        check_fits("sd35m-arch", "bf16")


def test_sd35m_arch_without_t5_builds_as_sd3_allows():
    pipe = build_embedded("sd35m-arch", empty=True, drop=("text_encoder_3",))
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None and pipe.text_encoder_2 is not None
    with pytest.raises(lab.LabError, match="droppable"):
        build_embedded("flux-arch", empty=True, drop=("text_encoder_2",))


def test_gpu_memory_counts_too(monkeypatch):
    free = {"cpu": 200 * GIB, "cuda": 20 * GIB}
    monkeypatch.setattr(models, "available_memory", lambda device: free[device.split(":")[0]])
    with pytest.raises(models.ModelUnavailableError, match="free on cuda"):
        check_fits("flux-arch", "bf16", "cuda")
    free["cuda"] = 140 * GIB  # an H200
    assert check_fits("flux-arch", "bf16", "cuda") == ()


def test_trained_tiny_flux_is_small_and_follows_prompts(tiny_flux):
    folder = EMBEDDED["tiny-flux"].folder
    assert EMBEDDED["tiny-flux"].trained
    assert sum(p.stat().st_size for p in folder.rglob("*.safetensors")) <= 25 * 10**6
    prompts = lab.shapes.held_out_prompts(8, seed=1)
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    images = tiny_flux(prompts, num_inference_steps=20, generator=gens).images
    assert images[0].size == (64, 64)
    assert lab.adherence(images, prompts).overall >= 0.6
