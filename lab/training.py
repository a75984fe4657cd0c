"""Train the embedded ``tiny`` text-to-image model on shape scenes (``lab.shapes``), on CPU.

Two phases, each checkpointed and resumable: a small ``AutoencoderKL`` (64×64 pixels ↔ 4×16×16
latents), then a small ``UNet2DConditionModel`` together with a small ``CLIPTextModel``. The result
is a standard diffusers folder that ``StableDiffusionPipeline.from_pretrained`` loads offline.
Deterministic: the data pool comes from ``seed``, and every step's noise from ``seed`` and the step.

Usage: ``python -m lab train --out data/models/tiny`` (``--smoke`` for a few iterations).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ._checks import LabError, positive_int, writable_dir
from .results import Record

TOKENIZER = "models/tiny-random/tokenizer"  # relative to data/: whole-word tokens for the grammar


@dataclass
class TrainConfig(Record):
    """Everything that decides the trained weights (with the code version)."""

    seed: int = 0
    pool: int = 24_000  # distinct scenes rendered once and reused; the generator could make more
    vae_steps: int = 1_500
    vae_batch: int = 16
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    unet_steps: int = 5_500
    unet_batch: int = 32
    unet_lr: float = 1e-3
    warmup: int = 200
    cfg_dropout: float = 0.1  # empty caption this often, for classifier-free guidance
    snr_gamma: float = 5.0  # Min-SNR loss weighting
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    threads: int = 2
    # Architecture
    vae_channels: tuple[int, ...] = (16, 32, 64)
    unet_channels: tuple[int, ...] = (64, 128)
    text_width: int = 64
    text_layers: int = 2

    @classmethod
    def smoke(cls) -> "TrainConfig":
        """A few iterations of each phase on a small pool: proves the code runs, not a useful model."""
        return cls(pool=64, vae_steps=3, vae_batch=4, unet_steps=3, unet_batch=4, warmup=1, checkpoint_every=2,
                   vae_channels=(8, 16, 16), unet_channels=(16, 32), text_width=16)


@dataclass
class TrainReport(Record):
    config: TrainConfig
    seconds: dict[str, float] = field(default_factory=dict)  # wall: render+encode, each phase over resumed runs
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # process CPU time (all threads), same keys
    final_loss: dict[str, float] = field(default_factory=dict)  # mean of the last 100 steps
    losses: dict[str, list[float]] = field(default_factory=dict)  # every step
    vae_scaling_factor: float = 0.0
    environment: dict = field(default_factory=dict)


def vae_config(c: TrainConfig) -> dict:
    n = len(c.vae_channels)
    return dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=list(c.vae_channels),
                down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                layers_per_block=1, norm_num_groups=8, sample_size=64, act_fn="silu")


def unet_config(c: TrainConfig) -> dict:
    # No attention at the full 16×16 latent resolution: it cost half the step time for little gain.
    n = len(c.unet_channels)
    return dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=list(c.unet_channels),
                down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1),
                up_block_types=["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"],
                layers_per_block=1, cross_attention_dim=c.text_width, attention_head_dim=4, norm_num_groups=8)


def text_config(c: TrainConfig, vocab_size: int) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=c.text_width, intermediate_size=2 * c.text_width,
                num_hidden_layers=c.text_layers, num_attention_heads=4, max_position_embeddings=77,
                projection_dim=c.text_width, hidden_act="quick_gelu", bos_token_id=vocab_size - 2,
                eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)


SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True,
                 steps_offset=1)


def _lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))  # cosine down to 10%


def _pool(c: TrainConfig, progress: bool):
    """The training images as a float tensor in [-1, 1] and their captions."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from . import shapes

    chunk = 1000
    images, captions = [], []
    for start in tqdm(range(0, c.pool, chunk), desc="render scenes", disable=not progress):
        imgs, caps, _ = shapes.sample(c.seed * 1_000_003 + start, min(chunk, c.pool - start))
        images.append(imgs)
        captions += caps
    pixels = torch.from_numpy(np.concatenate(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return pixels, captions


class _Checkpoint:
    """One phase's resumable state: models, optimizer, EMA, step and losses (torch.save, read back with
    ``weights_only=True``)."""

    def __init__(self, path: Path):
        self.path = path

    def load(self):
        import torch

        return torch.load(self.path, weights_only=True) if self.path.is_file() else None

    def resume(self, parts: dict) -> tuple[int, list[float], "_Clock"]:
        """Restore every part (models, optimizer, EMA) from the checkpoint if there is one:
        the next step, the losses so far and the phase's clock."""
        state = self.load()
        if not state:
            return 0, [], _Clock()
        for key, part in parts.items():
            part.load_state_dict(state[key])
        return state["step"], state["losses"], _Clock(state)

    def save(self, parts: dict, step: int, losses: list[float], clock: "_Clock") -> None:
        import torch

        tmp = self.path.with_suffix(".tmp")
        state = {key: part.state_dict() for key, part in parts.items()}
        torch.save({**state, "step": step, "losses": losses, **clock.read()}, tmp)
        tmp.replace(self.path)


class _Clock:
    """Wall and CPU seconds of a phase, carried through checkpoints so a resumed phase counts every run."""

    def __init__(self, state: dict | None = None):
        state = state or {}
        self._wall = time.perf_counter() - state.get("seconds", 0.0)
        self._cpu = time.process_time() - state.get("cpu_seconds", 0.0)

    def read(self) -> dict[str, float]:
        return {"seconds": time.perf_counter() - self._wall, "cpu_seconds": time.process_time() - self._cpu}


def _batches(n: int, batch: int, seed: int, step: int):
    import torch

    g = torch.Generator().manual_seed(seed * 7919 + step)
    return torch.randint(0, n, (batch,), generator=g), g


def train_vae(c: TrainConfig, pixels, work: Path, progress: bool = True):
    """Phase 1: the autoencoder (L1 + MSE reconstruction, a small KL term)."""
    import torch
    from diffusers import AutoencoderKL
    from tqdm.auto import tqdm

    torch.manual_seed(c.seed)
    vae = AutoencoderKL(**vae_config(c))
    opt = torch.optim.AdamW(vae.parameters(), lr=c.vae_lr, weight_decay=0.0)
    ckpt, parts = _Checkpoint(work / "vae.pt"), {"vae": vae, "opt": opt}
    start, losses, clock = ckpt.resume(parts)
    bar = tqdm(range(start, c.vae_steps), desc="train vae", initial=start, total=c.vae_steps, disable=not progress)
    for step in bar:
        idx, g = _batches(len(pixels), c.vae_batch, c.seed, step)
        x = pixels[idx]
        for group in opt.param_groups:
            group["lr"] = _lr(step, c.vae_steps, c.vae_lr, c.warmup)
        dist = vae.encode(x).latent_dist
        rec = vae.decode(dist.sample(generator=g)).sample
        loss = (rec - x).abs().mean() + ((rec - x) ** 2).mean() + c.kl_weight * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        done = step + 1
        if done % c.checkpoint_every == 0 or done == c.vae_steps:
            ckpt.save(parts, done, losses, clock)
    vae.eval().requires_grad_(False)
    return vae, losses, clock.read()


@dataclass
class _Unet:
    unet: object
    text_encoder: object
    losses: list[float]
    clock: dict[str, float]


def _encode_pool(vae, pixels, progress: bool):
    import torch
    from tqdm.auto import tqdm

    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(pixels), 500), desc="encode latents", disable=not progress):
            out.append(vae.encode(pixels[i : i + 500]).latent_dist.mean)
    return torch.cat(out)


def train_unet(c: TrainConfig, latents, captions: list[str], tokenizer, work: Path, progress: bool = True) -> _Unet:
    """Phase 2: UNet and text encoder together, epsilon prediction with Min-SNR weighting and EMA."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import EMAModel, compute_snr
    from tqdm.auto import tqdm
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(c.seed + 1)
    unet = UNet2DConditionModel(**unet_config(c))
    torch.manual_seed(c.seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config(c, len(tokenizer))))
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=c.unet_lr, weight_decay=1e-2)
    ema = EMAModel(params, decay=c.ema_decay, use_ema_warmup=True)
    noise_scheduler = DDPMScheduler.from_config(SCHEDULER)  # the training noise of the shipped PNDM config
    ids = tokenizer(captions + [""], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    caption_ids, empty_ids = ids[:-1], ids[-1]
    ckpt = _Checkpoint(work / "unet.pt")
    parts = {"unet": unet, "text_encoder": text_encoder, "opt": opt, "ema": ema}
    start, losses, clock = ckpt.resume(parts)
    bar = tqdm(range(start, c.unet_steps), desc="train unet+text", initial=start, total=c.unet_steps,
               disable=not progress)
    for step in bar:
        idx, g = _batches(len(latents), c.unet_batch, c.seed + 1, step)
        x0 = latents[idx]
        tokens = caption_ids[idx].clone()
        tokens[torch.rand(len(idx), generator=g) < c.cfg_dropout] = empty_ids
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(idx),), generator=g)
        for group in opt.param_groups:
            group["lr"] = _lr(step, c.unet_steps, c.unet_lr, c.warmup)
        pred = unet(noise_scheduler.add_noise(x0, noise, t), t, text_encoder(tokens)[0]).sample
        snr = compute_snr(noise_scheduler, t)
        weight = torch.clamp(snr, max=c.snr_gamma) / snr
        loss = (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.step(params)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-100:]) / len(losses[-100:]):.4f}")
        done = step + 1
        if done % c.checkpoint_every == 0 or done == c.unet_steps:
            ckpt.save(parts, done, losses, clock)
    ema.copy_to(params)
    return _Unet(unet.eval(), text_encoder.eval(), losses, clock.read())


def check_out(out: str | Path) -> Path:
    """``out`` as a training destination: absent, empty, or a folder a previous training wrote (it is replaced
    at the end); a file or a folder holding anything else is refused before any training or checkpoint."""
    if not isinstance(out, (str, Path)) or not str(out).strip():
        raise LabError(f"--out must be a non-empty path, got {out!r}")
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise LabError(f"--out {str(out)!r} is a file, not a folder; pass a new folder for the trained model")
    if out.is_dir() and any(out.iterdir()) and not (out / "training.json").is_file():
        raise LabError(f"--out {str(out)!r} holds files that are not a model lab trained (no training.json); "
                       "training would replace them: pass a new or empty folder")
    return out


def train(out: str | Path, config: TrainConfig | None = None, *, work: str | Path | None = None,
          progress: bool = True) -> TrainReport:
    """Train both phases (resuming from checkpoints in ``work``) and write a diffusers folder to ``out``.

    Args:
        work: checkpoint folder; default ``<out>.work`` beside ``out``. Delete it to start over.
    """
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from .env import Environment
    from .models import DATA

    c = config or TrainConfig()
    for name in ("pool", "vae_steps", "vae_batch", "unet_steps", "unet_batch", "checkpoint_every", "threads"):
        positive_int(name, getattr(c, name))
    if not 0 <= c.cfg_dropout < 1:
        raise LabError(f"cfg_dropout must be in [0, 1), got {c.cfg_dropout!r}")
    out = check_out(out)
    work = writable_dir(work or out.with_name(out.name + ".work"))
    saved = work / "config.json"
    if saved.is_file() and TrainConfig.load(saved) != c:
        raise LabError(f"checkpoints in {str(work)!r} were made with another config; delete the folder or pass "
                       "the same config to resume")
    c.save(saved)
    torch.set_num_threads(c.threads)
    tokenizer = CLIPTokenizer.from_pretrained(DATA / TOKENIZER, model_max_length=77)

    clock = _Clock()
    pixels, captions = _pool(c, progress)
    render = clock.read()
    vae, vae_losses, vae_clock = train_vae(c, pixels, work, progress)
    clock = _Clock()
    latents = _encode_pool(vae, pixels, progress)
    data_clock = {k: v + render[k] for k, v in clock.read().items()}
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    unet = train_unet(c, latents * scaling, captions, tokenizer, work, progress)

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=unet.text_encoder, tokenizer=tokenizer,
        unet=unet.unet, scheduler=PNDMScheduler.from_config(SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    staging = out.with_name(out.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging, safe_serialization=True)
    for name in ("vocab.json", "merges.txt"):  # transformers 4.x reads these, not v5's tokenizer.json
        shutil.copyfile(DATA / TOKENIZER / name, staging / "tokenizer" / name)
    clocks = {"data": data_clock, "vae": vae_clock, "unet+text_encoder": unet.clock}
    report = TrainReport(
        config=c,
        seconds={k: round(v["seconds"], 1) for k, v in clocks.items()},
        cpu_seconds={k: round(v["cpu_seconds"], 1) for k, v in clocks.items()},
        final_loss={"vae": _tail_mean(vae_losses), "unet+text_encoder": _tail_mean(unet.losses)},
        losses={"vae": [round(x, 5) for x in vae_losses], "unet+text_encoder": [round(x, 5) for x in unet.losses]},
        vae_scaling_factor=scaling,
        environment=Environment.capture().to_dict(),
    )
    (staging / "training.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")
    # Swap in the finished folder only at the end: an interrupted run never leaves half a model.
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)
    return report


def _tail_mean(losses: list[float], n: int = 100) -> float:
    tail = losses[-n:]
    return round(sum(tail) / len(tail), 5)
