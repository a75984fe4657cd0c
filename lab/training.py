"""Train the embedded ``tiny`` and ``tiny-flux`` text-to-image models on shape scenes (``lab.shapes``), on CPU.

``tiny`` (``train``): two phases, each checkpointed and resumable: a small ``AutoencoderKL`` (64×64
pixels ↔ 4×16×16 latents), then a small ``UNet2DConditionModel`` together with a small
``CLIPTextModel``; ``StableDiffusionPipeline.from_pretrained`` loads the result offline.

``tiny-flux`` (``train_flux``): a scaled-down ``FluxTransformer2DModel`` trained with the rectified-flow
loss on packed latents of ``tiny``'s frozen VAE, with ``tiny``'s CLIP (the pooled embedding) and a T5
encoder fine-tuned and trained jointly; ``FluxPipeline.from_pretrained`` loads the result.

Deterministic: the data pool comes from ``seed``, and every step's noise from ``seed`` and the step.

Usage: ``python -m lab train --out data/models/tiny`` or ``--model tiny-flux --out data/models/tiny-flux``
(``--smoke`` for a few iterations).
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
T5_TOKENIZER = "tokenizers/t5-shapes"  # relative to data/: the T5-style tokenizer of tiny-flux
FLUX_BASE = "models/tiny"  # relative to data/: tiny-flux reuses this trained VAE and CLIP text encoder


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


def _step(loss, opt, params, ema, losses: list[float], bar) -> None:
    """One optimizer step of either trainer: clipped gradients, EMA update, the running loss on the bar."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    ema.step(params)
    losses.append(loss.item())
    bar.set_postfix(loss=f"{sum(losses[-100:]) / len(losses[-100:]):.4f}")


def _start(c, out, work) -> tuple[Path, Path]:
    """``(out, work)`` of a training run: ``out`` checked (``check_out``), the checkpoint folder made, and its
    saved config compared with ``c`` so a resume never mixes two configurations."""
    import torch

    out = check_out(out)
    work = writable_dir(work or out.with_name(out.name + ".work"))
    saved = work / "config.json"
    try:
        same = not saved.is_file() or type(c).load(saved) == c
    except (ValueError, TypeError):  # another model's training (tiny's config in a tiny-flux run, or the reverse)
        same = False
    if not same:
        raise LabError(f"checkpoints in {str(work)!r} were made with another config or model; delete the folder, "
                       "pass another --work, or pass the same config to resume")
    c.save(saved)
    torch.set_num_threads(c.threads)
    return out, work


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
        _step(loss, opt, params, ema, losses, bar)
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
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from .env import Environment
    from .models import DATA

    c = config or TrainConfig()
    for name in ("pool", "vae_steps", "vae_batch", "unet_steps", "unet_batch", "checkpoint_every", "threads"):
        positive_int(name, getattr(c, name))
    if not 0 <= c.cfg_dropout < 1:
        raise LabError(f"cfg_dropout must be in [0, 1), got {c.cfg_dropout!r}")
    out, work = _start(c, out, work)
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
    _publish(staging, out, report)
    return report


def _publish(staging: Path, out: Path, report: Record) -> None:
    from .results import atomic_write_text

    atomic_write_text(staging / "training.json", json.dumps(report.to_dict(), indent=1) + "\n")
    # Swap in the finished folder only at the end: an interrupted run never leaves half a model.
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)


def _tail_mean(losses: list[float], n: int = 100) -> float:
    tail = losses[-n:]
    return round(sum(tail) / len(tail), 5)


# --- tiny-flux ---------------------------------------------------------------------------------------------


@dataclass
class FluxTrainConfig(Record):
    """Everything that decides the trained ``tiny-flux`` weights (with the code and ``tiny``'s VAE and CLIP)."""

    seed: int = 0
    pool: int = 24_000
    steps: int = 2_500
    batch: int = 32
    lr: float = 7e-4
    warmup: int = 200
    cfg_dropout: float = 0.1  # empty caption this often, so true CFG (negative_prompt="") is possible
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    threads: int = 1  # on 2 cores shared with other jobs, 2 threads ran 5-10x slower than 1 (spinning workers)
    # The T5 sequence length training emulates: FluxPipeline's default max_sequence_length.
    max_sequence_length: int = 512
    # Architecture: FLUX.1's, scaled down (FLUX.1-dev: 19 double, 38 single blocks, 24 heads of 128)
    double_layers: int = 2
    single_layers: int = 4
    heads: int = 6  # 4 scored 0.840 held-out adherence (shapes 0.49); 6 scored 0.876 (docs/benchmarks.md)
    head_dim: int = 32
    t5_width: int = 64

    @classmethod
    def smoke(cls) -> "FluxTrainConfig":
        """A few iterations on a small pool: proves the code runs, not a useful model."""
        return cls(pool=64, steps=3, batch=4, warmup=1, checkpoint_every=2, double_layers=1, single_layers=1,
                   heads=2, head_dim=16, t5_width=16)


@dataclass
class FluxTrainReport(Record):
    config: FluxTrainConfig
    seconds: dict[str, float] = field(default_factory=dict)  # wall: render+encode, training over resumed runs
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # process CPU time (all threads), same keys
    final_loss: dict[str, float] = field(default_factory=dict)  # mean of the last 100 steps
    losses: dict[str, list[float]] = field(default_factory=dict)  # every step
    vae_shift_factor: float = 0.0
    vae_scaling_factor: float = 0.0
    environment: dict = field(default_factory=dict)
    steps_done: int = 0  # config.steps, or fewer when the run was stopped early (``until``)


def flux_transformer_config(c: FluxTrainConfig, pooled_dim: int) -> dict:
    rope = c.head_dim // 4  # FLUX.1 splits its 128 head dims 16/56/56 over (text, row, column); keep the spirit
    return dict(patch_size=1, in_channels=16, num_layers=c.double_layers, num_single_layers=c.single_layers,
                attention_head_dim=c.head_dim, num_attention_heads=c.heads, joint_attention_dim=c.t5_width,
                pooled_projection_dim=pooled_dim, guidance_embeds=False,
                axes_dims_rope=[rope, (c.head_dim - rope) // 2, c.head_dim - rope - (c.head_dim - rope) // 2])


def t5_config(c: FluxTrainConfig, vocab_size: int) -> dict:
    # No blocks: an embedding and T5's final RMSNorm. Every <pad> then encodes to the same vector, which is
    # what lets training emulate the pipeline's 512-token padding exactly at the cost of one pad token.
    return dict(vocab_size=vocab_size, d_model=c.t5_width, d_kv=c.t5_width // 4, d_ff=2 * c.t5_width,
                num_layers=0, num_heads=4, dropout_rate=0.0, feed_forward_proj="gated-gelu", pad_token_id=0,
                eos_token_id=1, decoder_start_token_id=0)


FLUX_SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                      num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)  # FLUX.1-dev's


def pad_bias(lengths, short: int, full: int):
    """Additive attention bias over a text sequence cut to ``short`` tokens: ``log((full - n) / (short - n))``
    on each of its ``short - n`` pad tokens (``n`` = ``lengths``, the real tokens, EOS included), 0 elsewhere.

    Identical tokens stay identical through every Flux block (text positions all share RoPE id 0), so
    ``full - n`` pads weigh in attention exactly as ``short - n`` copies with that bias.
    """
    import torch

    n = torch.as_tensor(lengths).unsqueeze(1)
    pos = torch.arange(short).unsqueeze(0)
    bias = torch.log((full - n).float() / (short - n).float())
    return torch.where(pos >= n, bias, torch.zeros(()))


def _flux_sigmas(g, batch: int, image_tokens: int):
    """Training noise levels: logit-normal (SD3's) time-shifted as FluxPipeline shifts at ``image_tokens``."""
    import torch

    c = FLUX_SCHEDULER
    m = (c["max_shift"] - c["base_shift"]) / (c["max_image_seq_len"] - c["base_image_seq_len"])
    shift = math.exp(image_tokens * m + c["base_shift"] - m * c["base_image_seq_len"])
    u = torch.sigmoid(torch.randn(batch, generator=g))
    return shift * u / (1 + (shift - 1) * u)


@dataclass
class _Flux:
    transformer: object
    text_encoder: object
    text_encoder_2: object
    losses: list[float]
    clock: dict[str, float]


def train_flux_transformer(c: FluxTrainConfig, latents, captions: list[str], tokenizers: tuple, clip, work: Path,
                           progress: bool = True, until: int | None = None) -> _Flux:
    """The transformer, T5 and (fine-tuned) CLIP together: rectified flow (predict noise − data) with EMA."""
    import torch
    import torch.nn.functional as F
    from diffusers import FluxTransformer2DModel

    from ._quiet import quiet_transformers

    with quiet_transformers():  # importing the pipeline class imports image processors lab never uses
        from diffusers import FluxPipeline
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm
    from transformers import T5Config, T5EncoderModel

    clip_tok, t5_tok = tokenizers
    torch.manual_seed(c.seed + 1)
    transformer = FluxTransformer2DModel(**flux_transformer_config(c, clip.config.hidden_size))
    torch.manual_seed(c.seed + 2)
    t5 = T5EncoderModel(T5Config(**t5_config(c, len(t5_tok))))
    clip.train().requires_grad_(True)
    params = list(transformer.parameters()) + list(t5.parameters()) + list(clip.parameters())
    opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=1e-2)
    ema = EMAModel(params, decay=c.ema_decay, use_ema_warmup=True)

    texts = captions + [""]
    clip_ids = clip_tok(texts, padding="max_length", max_length=clip_tok.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
    t5_lists = t5_tok(texts, truncation=True, max_length=c.max_sequence_length).input_ids
    short = max(map(len, t5_lists)) + 1  # at least one pad token stands for all of them
    t5_len = torch.tensor([len(x) for x in t5_lists])
    t5_ids = torch.tensor([x + [t5_tok.pad_token_id] * (short - len(x)) for x in t5_lists])
    empty = len(captions)

    b, ch, h, w = latents.shape
    packed = FluxPipeline._pack_latents(latents, b, ch, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", torch.float32)
    txt_ids = torch.zeros(short, 3)
    ckpt = _Checkpoint(work / "transformer.pt")
    parts = {"transformer": transformer, "text_encoder_2": t5, "text_encoder": clip, "opt": opt, "ema": ema}
    start, losses, clock = ckpt.resume(parts)
    stop = c.steps if until is None else max(start, min(until, c.steps))
    bar = tqdm(range(start, stop), desc="train transformer+text", initial=start, total=c.steps,
               disable=not progress)
    for step in bar:
        idx, g = _batches(len(packed), c.batch, c.seed + 1, step)
        x0 = packed[idx]
        rows = idx.clone()
        rows[torch.rand(len(idx), generator=g) < c.cfg_dropout] = empty
        noise = torch.randn(x0.shape, generator=g)
        sigma = _flux_sigmas(g, len(idx), packed.shape[1])
        s = sigma.view(-1, 1, 1)
        mask = torch.cat([pad_bias(t5_len[rows], short, c.max_sequence_length),
                          torch.zeros(len(idx), packed.shape[1])], dim=1)[:, None, None, :]
        for group in opt.param_groups:
            group["lr"] = _lr(step, c.steps, c.lr, c.warmup)
        pred = transformer(hidden_states=(1 - s) * x0 + s * noise, timestep=sigma,
                           pooled_projections=clip(clip_ids[rows]).pooler_output,
                           encoder_hidden_states=t5(t5_ids[rows])[0], txt_ids=txt_ids, img_ids=img_ids,
                           joint_attention_kwargs={"attention_mask": mask}, return_dict=False)[0]
        loss = F.mse_loss(pred, noise - x0)
        _step(loss, opt, params, ema, losses, bar)
        done = step + 1
        if done % c.checkpoint_every == 0 or done in (c.steps, stop):
            ckpt.save(parts, done, losses, clock)
    ema.copy_to(params)
    return _Flux(transformer.eval(), clip.eval(), t5.eval(), losses, clock.read())


def _flux_data(c: FluxTrainConfig, vae, work: Path, progress: bool):
    """The pool's VAE latent means and captions, cached in ``work`` (rendering and encoding take minutes)."""
    import torch

    cache = work / "latents.pt"
    if cache.is_file():
        state = torch.load(cache, weights_only=True)
        return state["latents"], state["captions"], {k: state[k] for k in ("seconds", "cpu_seconds")}
    clock = _Clock()
    pixels, captions = _pool(c, progress)
    latents = _encode_pool(vae, pixels, progress)
    seconds = clock.read()
    tmp = cache.with_suffix(".tmp")
    torch.save({"latents": latents, "captions": captions, **seconds}, tmp)
    tmp.replace(cache)
    return latents, captions, seconds


def train_flux(out: str | Path, config: FluxTrainConfig | None = None, *, work: str | Path | None = None,
               progress: bool = True, until: int | None = None) -> FluxTrainReport:
    """Train ``tiny-flux`` (resuming from checkpoints in ``work``) and write a FluxPipeline folder to ``out``.

    Args:
        work: checkpoint folder; default ``<out>.work`` beside ``out``. Delete it to start over.
        until: stop after this step (or at the last checkpoint, if that is later) and write the model from
            there, its EMA weights included; ``steps_done`` in the report says where it stopped.
    """
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

    from ._quiet import quiet_transformers

    with quiet_transformers():  # importing the pipeline class imports image processors lab never uses
        from diffusers import FluxPipeline
    from transformers import CLIPTextModel, CLIPTokenizer, T5TokenizerFast

    from .env import Environment
    from .models import DATA

    c = config or FluxTrainConfig()
    for name in ("pool", "steps", "batch", "checkpoint_every", "threads", "max_sequence_length", "double_layers",
                 "single_layers", "heads", "head_dim", "t5_width"):
        positive_int(name, getattr(c, name))
    if not 0 <= c.cfg_dropout < 1:
        raise LabError(f"cfg_dropout must be in [0, 1), got {c.cfg_dropout!r}")
    if c.max_sequence_length > 512:
        raise LabError(f"max_sequence_length must be at most 512 (FluxPipeline's limit), got {c.max_sequence_length}")
    if c.head_dim % 4 or c.t5_width % 4:
        raise LabError(f"head_dim and t5_width must be multiples of 4, got {c.head_dim} and {c.t5_width}")
    out, work = _start(c, out, work)
    base = DATA / FLUX_BASE
    clip_tok = CLIPTokenizer.from_pretrained(DATA / TOKENIZER, model_max_length=77)
    t5_tok = T5TokenizerFast.from_pretrained(DATA / T5_TOKENIZER)
    vae = AutoencoderKL.from_pretrained(base / "vae").eval().requires_grad_(False)
    torch.manual_seed(c.seed)
    clip = CLIPTextModel.from_pretrained(base / "text_encoder")

    latents, captions, data_clock = _flux_data(c, vae, work, progress)
    shift = float(latents.mean())
    scaling = float(1.0 / (latents - shift).std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scaling)
    trained = train_flux_transformer(c, (latents - shift) * scaling, captions, (clip_tok, t5_tok), clip, work,
                                     progress, until)

    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(FLUX_SCHEDULER), vae=vae,
        text_encoder=trained.text_encoder, tokenizer=clip_tok, text_encoder_2=trained.text_encoder_2,
        tokenizer_2=t5_tok, transformer=trained.transformer,
    )
    staging = out.with_name(out.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging, safe_serialization=True)
    for name in ("vocab.json", "merges.txt"):  # as train(): the CLIP files transformers 4.x reads
        shutil.copyfile(DATA / TOKENIZER / name, staging / "tokenizer" / name)
    clocks = {"data": data_clock, "transformer+text_encoders": trained.clock}
    report = FluxTrainReport(
        config=c,
        seconds={k: round(v["seconds"], 1) for k, v in clocks.items()},
        cpu_seconds={k: round(v["cpu_seconds"], 1) for k, v in clocks.items()},
        final_loss={"transformer+text_encoders": _tail_mean(trained.losses)},
        losses={"transformer+text_encoders": [round(x, 5) for x in trained.losses]},
        vae_shift_factor=shift, vae_scaling_factor=scaling,
        environment=Environment.capture().to_dict(), steps_done=len(trained.losses),
    )
    _publish(staging, out, report)
    return report
