import json

import numpy as np
import pytest

import lab
from lab.models import EMBEDDED, build_embedded, parameter_counts

from .conftest import generate


def test_tiny_loads_offline_and_makes_a_64px_image(tiny_pipe):
    image = generate(tiny_pipe)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert lab.default_size(tiny_pipe) == 64
    assert image.std() > 0  # not a constant image


@pytest.mark.parametrize("model", ["tiny", "tiny-random"])
def test_tiny_is_deterministic_across_builds(model):
    one, other = lab.load_pipeline(model, device="cpu"), lab.load_pipeline(model, device="cpu")
    assert np.array_equal(generate(one, seed=3), generate(other, seed=3))
    assert not np.array_equal(generate(one, seed=3), generate(one, seed=4))


@pytest.mark.parametrize("model", ["tiny", "tiny-random"])
def test_tiny_weights_are_identical_across_builds(model):
    one, other = lab.load_pipeline(model, device="cpu"), lab.load_pipeline(model, device="cpu")
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(one, name).state_dict(), getattr(other, name).state_dict()
        assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a), name


@pytest.mark.parametrize("name", ["sd15-arch", "sd21-arch", "sdxl-arch"])
def test_realistic_architectures_match_published_parameter_counts(name):
    counts = parameter_counts(build_embedded(name, empty=True))
    published = dict(EMBEDDED[name].published_params)
    assert set(published) <= set(counts)
    for component, expected in published.items():
        assert abs(counts[component] / expected - 1) < 0.01, (component, counts[component], expected)


def test_sd15_unet_is_about_859_million_parameters():
    counts = parameter_counts(build_embedded("sd15-arch", empty=True))
    assert 850e6 < counts["unet"] < 869e6


def test_realistic_architectures_use_real_vocabulary_size():
    pipe = build_embedded("sdxl-arch", empty=True)
    for tok, enc in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        assert len(tok) == enc.config.vocab_size == 49408
        assert tok.model_max_length == 77


def test_tiny_tokenizer_agrees_with_text_encoder(tiny_pipe):
    tok, config = tiny_pipe.tokenizer, tiny_pipe.text_encoder.config
    assert len(tok) == config.vocab_size
    assert (tok.bos_token_id, tok.eos_token_id) == (config.bos_token_id, config.eos_token_id)
    ids = tok("a photo of an astronaut riding a horse on mars").input_ids
    assert tok.convert_ids_to_tokens(ids)[1:3] == ["a</w>", "photo</w>"]


def test_tiny_sdxl_runs_the_sdxl_pipeline():
    pipe = lab.load_pipeline("tiny-sdxl", device="cpu")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert generate(pipe).shape == (64, 64, 3)


@pytest.mark.slow
def test_sd15_arch_builds_for_real_and_generates():
    pipe = lab.load_pipeline("sd15-arch", dtype="bf16", device="cpu")
    assert parameter_counts(pipe)["unet"] == 859_520_964
    assert generate(pipe, steps=1, height=64, width=64).shape == (64, 64, 3)


def test_local_folder_roundtrip_is_bit_identical(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "tiny")
    loaded = lab.load_pipeline(str(tmp_path / "tiny"), device="cpu")
    assert np.array_equal(generate(tiny_pipe), generate(loaded))


def test_scheduler_swap_by_name():
    pipe = lab.load_pipeline("tiny", device="cpu", scheduler="dpmpp-2m-karras")
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert pipe.scheduler.config.use_karras_sigmas
    assert generate(pipe, steps=3).shape == (64, 64, 3)


@pytest.mark.parametrize("scheduler", lab.scheduler_names())
def test_every_scheduler_generates(tiny_pipe, scheduler):
    from lab.denoiser import model_kind
    from lab.schedulers import FLOW, fits, make_scheduler

    # each on a model of its family: DDPM-style on the UNet tiny, flow-matching on tiny-flux
    model = "tiny-flux" if scheduler in FLOW else "tiny"
    if why := fits(scheduler, model_kind(model)):  # flow-heun: FluxPipeline passes sigmas it cannot take
        assert scheduler == "flow-heun" and "sigmas" in why
        return
    pipe = lab.load_pipeline(model, device="cpu")
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    assert generate(pipe, steps=2).shape == (64, 64, 3)


def test_bf16_dtype_applies_to_every_module():
    pipe = lab.load_pipeline("tiny", dtype="bf16", device="cpu")
    assert {str(m.dtype) for m in (pipe.unet, pipe.vae, pipe.text_encoder)} == {"torch.bfloat16"}


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"dtype": "fp64"}, ["dtype", "'fp64'", "fp32", "bf16"]),
        ({"device": "tpu"}, ["device", "'tpu'", "cpu", "cuda"]),
        ({"scheduler": "eulr"}, ["scheduler", "'eulr'", "euler", "ddim"]),
    ],
)
def test_bad_names_list_what_is_allowed(kwargs, words):
    with pytest.raises(lab.LabError) as err:
        lab.load_pipeline("tiny", **kwargs)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_cuda_requested_without_cuda_fails_clearly():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available on this machine")
    with pytest.raises(ValueError, match="CUDA is not available"):
        lab.load_pipeline("tiny", device="cuda")


def test_hub_id_offline_fails_fast_with_guidance(monkeypatch):
    import socket

    from lab import models

    def no_network(*args, **kwargs):
        raise AssertionError("an offline load must not try the network")

    monkeypatch.setattr(models, "hub_reachable", no_network)  # fast = refused before any probe or download
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(lab.ModelUnavailableError) as err:
        lab.load_pipeline("runwayml/stable-diffusion-v1-5")
    message = str(err.value)
    assert "runwayml/stable-diffusion-v1-5" in message and "local folder" in message and "tiny" in message


def test_hub_unreachable_fails_fast(monkeypatch):
    from lab import models

    monkeypatch.setattr(models, "_hub_offline", lambda: False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(lab.ModelUnavailableError, match="cannot be reached"):
        lab.load_pipeline("someone/some-model")


def test_typo_of_embedded_name_suggests_it():
    with pytest.raises(lab.ModelUnavailableError, match="'tiny'"):
        lab.load_pipeline("tinyy")


def test_missing_local_folder_and_non_pipeline_folder(tmp_path):
    with pytest.raises(lab.ModelUnavailableError, match="no such folder"):
        lab.load_pipeline(str(tmp_path / "nope" / "model"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps({}))
    with pytest.raises(lab.ModelUnavailableError, match="model_index.json"):
        lab.load_pipeline(str(tmp_path / "empty"))
