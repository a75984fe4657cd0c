"""FLOPs per stage and utilisation against the device's measured matmul peak.

Two counts, cross-checked:

- ``FlopCounterMode`` (torch): counts matmul/conv/attention ATen ops as they run. In torch 2.13 it
  has no formula for the CPU fused attention op ``_scaled_dot_product_flash_attention_for_cpu``
  (counts 0), so lab registers the standard SDPA formula for it. This is the count lab trusts:
  it sees every op the pipeline really runs.
- An analytic count from module shapes (Conv2d, Linear and diffusers ``Attention`` hooks): an
  independent check that the first count neither misses nor double-counts attention.

Both count a multiply-add as 2 FLOPs and ignore element-wise ops (norms, activations).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from .cases import Case
from .env import synchronize
from .results import Record


def _sdpa_formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter(display: bool = False):
    """A ``FlopCounterMode`` that also counts CPU fused attention."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    return FlopCounterMode(display=display, custom_mapping={aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_formula})


# -- one UNet step, counted without running it ----------------------------------------------------
def _unet_inputs(config, batch: int, height: int, width: int, vae_scale: int, device: str):
    import torch

    h, w = height // vae_scale, width // vae_scale
    sample = torch.zeros(batch, config.in_channels, h, w, device=device)
    context = torch.zeros(batch, 77, config.cross_attention_dim, device=device)
    kwargs: dict[str, Any] = {"encoder_hidden_states": context}
    if config.addition_embed_type == "text_time":
        text_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.zeros(batch, text_dim, device=device),
            "time_ids": torch.zeros(batch, 6, device=device),
        }
    return sample, torch.tensor(10, device=device), kwargs


def _empty_unet(pipe):
    from accelerate import init_empty_weights

    unet = pipe.unet
    with init_empty_weights():
        return type(unet).from_config(unet.config)


def unet_step_flops(pipe, height: int, width: int, batch: int = 2) -> dict[str, int]:
    """FLOPs of one UNet forward (``batch`` 2 = one CFG step), by op, counted on the meta device."""
    import torch

    unet = _empty_unet(pipe)
    sample, t, kwargs = _unet_inputs(unet.config, batch, height, width, pipe.vae_scale_factor, "meta")
    with flop_counter() as counter, torch.no_grad():
        unet(sample, t, **kwargs)
    by_op = {str(op).removeprefix("aten."): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return {**by_op, "total": int(counter.get_total_flops())}


def analytic_unet_step_flops(pipe, height: int, width: int, batch: int = 2) -> dict[str, int]:
    """The same count from layer shapes: convolutions, linear layers and attention matmuls."""
    import torch
    from diffusers.models.attention_processor import Attention

    counts = {"conv": 0, "linear": 0, "attention": 0}

    def conv_hook(mod, args, out):
        k = mod.kernel_size[0] * mod.kernel_size[1]
        counts["conv"] += 2 * out.numel() * (mod.in_channels // mod.groups) * k

    def linear_hook(mod, args, out):
        counts["linear"] += 2 * out.numel() * mod.in_features

    def attention_hook(mod, args, kwargs, out):
        hidden = args[0] if args else kwargs["hidden_states"]
        context = kwargs.get("encoder_hidden_states")
        tokens_q = hidden.shape[-2] if hidden.ndim == 3 else hidden.shape[-1] * hidden.shape[-2]
        tokens_k = context.shape[1] if context is not None else tokens_q
        counts["attention"] += 4 * hidden.shape[0] * tokens_q * tokens_k * mod.inner_dim

    unet = _empty_unet(pipe)
    handles = []
    for module in unet.modules():
        if isinstance(module, torch.nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, torch.nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, Attention):
            handles.append(module.register_forward_hook(attention_hook, with_kwargs=True))
    sample, t, kwargs = _unet_inputs(unet.config, batch, height, width, pipe.vae_scale_factor, "meta")
    try:
        with torch.no_grad():
            unet(sample, t, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return {**counts, "total": sum(counts.values())}


# -- device peak ------------------------------------------------------------------------------------
@dataclass
class Peak(Record):
    """Achievable dense-matmul throughput of a device in one dtype (FLOP/s)."""

    device: str
    dtype: str
    flops_per_s: float
    size: int
    seconds: float


def measure_peak(device: str = "cpu", dtype: str = "fp32", sizes: tuple[int, ...] = (512, 1024, 2048),
                 min_time: float = 0.3) -> Peak:
    """Best FLOP/s of square matmuls over ``sizes`` (median of repeats after a warm-up)."""
    import torch

    from .env import torch_dtype

    dt = torch_dtype(dtype)
    best = None
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dt)
        b = torch.randn(n, n, device=device).to(dt)
        torch.mm(a, b)
        synchronize(device)
        times = []
        total = 0.0
        while total < min_time or len(times) < 3:
            start = time.perf_counter()
            torch.mm(a, b)
            synchronize(device)
            times.append(time.perf_counter() - start)
            total += times[-1]
        seconds = statistics.median(times)
        rate = 2 * n**3 / seconds
        if best is None or rate > best.flops_per_s:
            best = Peak(device=device, dtype=dtype, flops_per_s=rate, size=n, seconds=seconds)
    return best


# -- per-stage FLOPs of a real pipeline call -------------------------------------------------------------
@dataclass
class StageFlops(Record):
    stage: str
    flops: int
    seconds: float
    achieved_flops_per_s: float
    utilisation_pct: float


@dataclass
class FlopsReport(Record):
    """FLOPs, time, achieved FLOP/s and utilisation per stage of one case."""

    model: str
    case: Case
    peak: Peak
    stages: list[StageFlops]
    unet_step_flops: int
    unet_step_flops_analytic: int
    notes: list[str] = field(default_factory=list)

    def to_frame(self):
        import pandas as pd

        frame = pd.DataFrame([s.to_dict() for s in self.stages]).set_index("stage")
        frame["gflops"] = frame.pop("flops") / 1e9
        frame["achieved_gflops_per_s"] = frame.pop("achieved_flops_per_s") / 1e9
        return frame[["gflops", "seconds", "achieved_gflops_per_s", "utilisation_pct"]]

    def to_markdown(self) -> str:
        head = (f"peak {self.peak.flops_per_s / 1e9:.1f} GFLOP/s ({self.peak.dtype} matmul {self.peak.size}², "
                f"{self.peak.device}); UNet step {self.unet_step_flops / 1e9:.2f} GFLOP "
                f"(analytic {self.unet_step_flops_analytic / 1e9:.2f})\n\n")
        return head + self.to_frame().round(3).to_markdown()

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def stage(self, name: str) -> StageFlops:
        return next(s for s in self.stages if s.stage == name)


def count_stage_flops(pipe, case: Case) -> dict[str, int]:
    """FLOPs per stage (text_encoder, unet, vae_decode) of one real call of ``case``."""
    import torch

    from .timing import StageTimer

    counter = flop_counter()
    totals: dict[str, int] = {}
    marks: dict[str, int] = {}

    def listener(event: str, stage: str) -> None:
        key = "unet" if stage.startswith("unet_step_") else stage
        now = counter.get_total_flops()
        if event == "begin":
            marks[key] = now
        else:
            totals[key] = totals.get(key, 0) + now - marks.pop(key)

    with StageTimer(pipe, device=str(pipe.device), listener=listener) as timer, counter:
        timer.measure(pipe, generator=torch.Generator("cpu").manual_seed(case.seed), **case.pipeline_kwargs())
    return totals


def flops_report(pipe, case: Case, *, stage_seconds: dict[str, float] | None = None, peak: Peak | None = None,
                 repeats: int = 3) -> FlopsReport:
    """Count FLOPs per stage and set them against measured stage times and the device peak.

    Args:
        stage_seconds: median seconds per stage (``text_encoder``, ``unet``, ``vae_decode``), e.g.
            from a benchmark of the same case; measured here (warm-up + ``repeats``) when None.
    """
    import torch

    from .env import DTYPES, dtype_name
    from .timing import StageTimer

    device = str(pipe.device)
    dtype = dtype_name(pipe.unet.dtype)
    dtype = dtype if dtype in DTYPES else "fp32"  # no matmul peak for other dtypes: compare against fp32
    if stage_seconds is None:
        runs = []
        with StageTimer(pipe, device=device) as timer:
            for i in range(repeats + 1):
                _, t = timer.measure(pipe, generator=torch.Generator("cpu").manual_seed(case.seed),
                                     **case.pipeline_kwargs())
                if i:
                    runs.append(t)
        med = statistics.median
        stage_seconds = {"text_encoder": med(r.text_encoder for r in runs), "unet": med(r.unet for r in runs),
                         "vae_decode": med(r.vae_decode for r in runs)}
    flops = count_stage_flops(pipe, case)
    peak = peak or measure_peak(device, dtype)
    size = case.height or pipe.unet.config.sample_size * pipe.vae_scale_factor
    batch = 2 if case.guidance > 1 else 1
    stages = []
    for name in ("text_encoder", "unet", "vae_decode"):
        seconds = stage_seconds.get(name, 0.0)
        rate = flops.get(name, 0) / seconds if seconds > 0 else 0.0
        stages.append(StageFlops(name, int(flops.get(name, 0)), seconds, rate, 100 * rate / peak.flops_per_s))
    total_flops = sum(s.flops for s in stages)
    total_seconds = sum(s.seconds for s in stages)
    rate = total_flops / total_seconds if total_seconds else 0.0
    stages.append(StageFlops("total", total_flops, total_seconds, rate, 100 * rate / peak.flops_per_s))
    return FlopsReport(
        model=getattr(pipe, "lab_model", type(pipe).__name__),
        case=case,
        peak=peak,
        stages=stages,
        unet_step_flops=unet_step_flops(pipe, size, case.width or size, batch)["total"],
        unet_step_flops_analytic=analytic_unet_step_flops(pipe, size, case.width or size, batch)["total"],
        notes=["FLOPs count matmul, convolution and attention ops (2 per multiply-add); element-wise ops are "
               "not counted, so utilisation of norm/activation-heavy stages is understated."],
    )
