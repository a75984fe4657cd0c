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
