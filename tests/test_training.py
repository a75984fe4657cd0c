import json

import numpy as np
import pytest
import torch

import lab
from lab.training import TrainConfig, train


def _weights(folder):
    from safetensors.torch import load_file

    return {f"{part}.{k}": v for part in ("vae", "unet", "text_encoder")
            for k, v in load_file(next((folder / part).glob("*.safetensors"))).items()}


def test_smoke_training_writes_a_loadable_deterministic_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    report = train(tmp_path / "a", TrainConfig.smoke(), progress=False)
    assert set(report.seconds) == set(report.cpu_seconds) == {"data", "vae", "unet+text_encoder"}
    assert all(v > 0 for v in report.cpu_seconds.values())
    assert len(report.losses["unet+text_encoder"]) == TrainConfig.smoke().unet_steps
    assert all(np.isfinite(v) for v in report.final_loss.values())
    saved = json.loads((tmp_path / "a" / "training.json").read_text())
    assert TrainConfig.from_dict(saved["config"]) == TrainConfig.smoke()

    assert {"vocab.json", "merges.txt"} <= {p.name for p in (tmp_path / "a" / "tokenizer").iterdir()}
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "a", local_files_only=True)
    assert pipe.vae.config.scaling_factor == pytest.approx(report.vae_scaling_factor)
    image = pipe("a red circle on the left, white background", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (64, 64, 3)

    train(tmp_path / "b", TrainConfig.smoke(), progress=False)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_resumes_from_checkpoints_and_refuses_another_config(tmp_path):
    short = TrainConfig.smoke()
    short.unet_steps = 2
    train(tmp_path / "m", short, work=tmp_path / "work", progress=False)
    with pytest.raises(lab.LabError, match="another config"):
        train(tmp_path / "m", TrainConfig.smoke(), work=tmp_path / "work", progress=False)
    # Resuming the same config after its checkpoints exist does no step twice.
    again = train(tmp_path / "m", short, work=tmp_path / "work", progress=False)
    assert len(again.losses["unet+text_encoder"]) == 2


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from lab import training

    config = TrainConfig.smoke()
    config.unet_steps, config.checkpoint_every = 4, 2
    train(tmp_path / "whole", config, progress=False)

    real_save = training._Checkpoint.save

    def save_then_stop(self, parts, step, losses, clock):
        real_save(self, parts, step, losses, clock)
        if self.path.name == "unet.pt" and step == 2:
            raise KeyboardInterrupt  # as if the user stopped it after the first UNet checkpoint

    monkeypatch.setattr(training._Checkpoint, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed", config, progress=False)
    assert not (tmp_path / "resumed").exists()  # no half-written model
    monkeypatch.setattr(training._Checkpoint, "save", real_save)
    report = train(tmp_path / "resumed", config, progress=False)
    assert len(report.losses["unet+text_encoder"]) == 4
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_training_config_is_refused_early(tmp_path):
    with pytest.raises(lab.LabError, match="unet_steps must be an integer >= 1"):
        train(tmp_path / "x", TrainConfig(unet_steps=0), progress=False)
    with pytest.raises(lab.LabError, match="cfg_dropout"):
        train(tmp_path / "x", TrainConfig(cfg_dropout=1.5), progress=False)


def test_trained_tiny_loads_offline_and_follows_prompts():
    pipe = lab.load_pipeline("tiny", device="cpu")
    folder = lab.models.EMBEDDED["tiny"].folder
    size = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    assert size <= 30 * 2**20
    prompts = lab.shapes.held_out_prompts(8, seed=1)
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    images = pipe(prompts, num_inference_steps=20, generator=gens).images
    assert images[0].size == (64, 64)
    trained = lab.adherence(images, prompts)

    random = lab.load_pipeline("tiny-random", device="cpu")
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    chance = lab.adherence(random(prompts, num_inference_steps=20, generator=gens).images, prompts)
    assert trained.overall >= 0.7, trained.per_attribute()
    assert trained.overall >= chance.overall + 0.3, (trained.per_attribute(), chance.per_attribute())


def test_missing_trained_weights_fail_with_a_clear_message(monkeypatch, tmp_path):
    import dataclasses

    spec = dataclasses.replace(lab.models.EMBEDDED["tiny"])
    monkeypatch.setattr(type(spec), "folder", property(lambda self: tmp_path))
    monkeypatch.setitem(lab.models.EMBEDDED, "tiny", spec)
    with pytest.raises(lab.ModelUnavailableError, match="python -m lab train"):
        lab.load_pipeline("tiny", device="cpu")


def test_train_command_smoke(tmp_path, capsys):
    from lab.cli import main

    assert main(["train", "--smoke", "--quiet", "--out", str(tmp_path / "t")]) == 0
    assert "final losses" in capsys.readouterr().out
    assert (tmp_path / "t" / "model_index.json").is_file() and (tmp_path / "t.work" / "unet.pt").is_file()


def test_flux_smoke_training_writes_a_loadable_deterministic_flux_pipeline(tmp_path):
    from diffusers import FluxPipeline
    from safetensors.torch import load_file

    from lab.training import FluxTrainConfig, train_flux

    config = FluxTrainConfig.smoke()
    report = train_flux(tmp_path / "a", config, progress=False)
    assert set(report.seconds) == set(report.cpu_seconds) == {"data", "transformer+text_encoders"}
    assert len(report.losses["transformer+text_encoders"]) == config.steps
    assert all(np.isfinite(v) for v in report.final_loss.values())
    saved = json.loads((tmp_path / "a" / "training.json").read_text())
    assert FluxTrainConfig.from_dict(saved["config"]) == config
    pipe = FluxPipeline.from_pretrained(tmp_path / "a", local_files_only=True)
    assert pipe.vae.config.shift_factor == pytest.approx(report.vae_shift_factor)
    assert pipe.transformer.config.num_layers == config.double_layers
    image = pipe("a red circle on the left, white background", num_inference_steps=2, height=64, width=64,
                 output_type="np").images[0]
    assert image.shape == (64, 64, 3)

    # Resumes from its checkpoints (latents cached) to the same weights as a fresh run.
    config.steps = 4
    resumed = train_flux(tmp_path / "a", config, work=tmp_path / "a.work2", progress=False)
    train_flux(tmp_path / "b", config, progress=False)  # a fresh run, compared with the resumed one below
    assert len(resumed.losses["transformer+text_encoders"]) == 4
    with pytest.raises(lab.LabError, match="another config"):
        train_flux(tmp_path / "b", FluxTrainConfig.smoke(), progress=False)
    name = "transformer/diffusion_pytorch_model.safetensors"
    a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_flux_training_emulates_the_pipelines_512_token_padding_exactly():
    from diffusers import FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from lab.training import FluxTrainConfig, flux_transformer_config, pad_bias, t5_config

    c = FluxTrainConfig.smoke()
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(**flux_transformer_config(c, 8)).eval()
    t5 = T5EncoderModel(T5Config(**t5_config(c, 50))).eval()
    ids, lengths, short = [[5, 7, 9, 1], [4, 1]], [4, 2], 6
    g = torch.Generator().manual_seed(1)
    x, img_ids = torch.randn(2, 16, 16, generator=g), torch.randn(16, 3, generator=g)

    def run(length, bias):
        tokens = torch.tensor([row + [0] * (length - len(row)) for row in ids])
        kwargs = None if bias is None else {"attention_mask": torch.cat([bias, torch.zeros(2, 16)], 1)[:, None, None]}
        return transformer(hidden_states=x, timestep=torch.tensor([0.3, 0.7]), pooled_projections=torch.ones(2, 8),
                           encoder_hidden_states=t5(tokens)[0], txt_ids=torch.zeros(length, 3), img_ids=img_ids,
                           joint_attention_kwargs=kwargs, return_dict=False)[0]

    with torch.no_grad():
        full = run(512, None)  # what FluxPipeline feeds: T5 ids padded to max_sequence_length=512
        emulated = run(short, pad_bias(lengths, short, 512))
        cut = run(short, None)
    assert torch.allclose(full, emulated, atol=1e-5)
    assert not torch.allclose(full, cut, atol=1e-2)  # without the bias the pad count shows


def test_train_command_takes_the_model(tmp_path, capsys):
    from lab.cli import main

    assert main(["train", "--model", "tiny-flux", "--smoke", "--quiet", "--out", str(tmp_path / "f")]) == 0
    assert "final losses" in capsys.readouterr().out
    assert (tmp_path / "f" / "transformer" / "config.json").is_file()
    assert (tmp_path / "f.work" / "transformer.pt").is_file()


def test_flux_training_stopped_early_writes_the_model_from_its_last_step(tmp_path):
    from lab.training import FluxTrainConfig, train_flux

    config = FluxTrainConfig.smoke()
    config.steps = 4
    report = train_flux(tmp_path / "m", config, progress=False, until=2)
    assert report.steps_done == 2 and len(report.losses["transformer+text_encoders"]) == 2
    assert (tmp_path / "m" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    # The same config then finishes the run from that checkpoint.
    assert train_flux(tmp_path / "m", config, progress=False).steps_done == 4
