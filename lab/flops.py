"""FLOPs per stage and utilisation against the device's measured matmul peak.

Two counts, cross-checked:

- ``FlopCounterMode`` (torch): counts matmul/conv/attention ATen ops as they run. In torch 2.13 it
  has no formula for the CPU fused attention op ``_scaled_dot_product_flash_attention_for_cpu``
  (counts 0), so lab registers the standard SDPA formula for it. This is the count lab trusts:
  it sees every op the pipeline really runs.
- An analytic count from module shapes (Conv2d and Linear hooks, attention from the query and key shapes
  of each ``scaled_dot_product_attention`` call): an independent check that the first count neither
  misses nor double-counts attention. Both run on the meta device, for any denoiser (UNet, Flux, SD3).

Both count a multiply-add as 2 FLOPs and ignore element-wise ops (norms, activations).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from ._checks import LabError, choose
from .cases import Case
from .env import synchronize
from .denoiser import canonical_stage, is_step_stage
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


# -- one denoiser step, counted without running it -------------------------------------------------
FLUX_TEXT_TOKENS = 512  # FluxPipeline's default max_sequence_length (T5 tokens)
SD3_TEXT_TOKENS = 77 + 256  # CLIP tokens + StableDiffusion3Pipeline's default max_sequence_length


def _step_inputs(module, batch: int, height: int, width: int, vae_scale: int, device: str,
                 text_tokens: int | None = None):
    """Positional and keyword inputs of one denoiser forward, by denoiser class (UNet, Flux, SD3)."""
    import torch

    config, kind = module.config, type(module).__name__
    zeros = lambda *shape: torch.zeros(*shape, device=device)  # noqa: E731
    h, w = height // vae_scale, width // vae_scale
    if kind == "FluxTransformer2DModel":
        tokens, seq = text_tokens or FLUX_TEXT_TOKENS, (h // 2) * (w // 2)
        kwargs = {"encoder_hidden_states": zeros(batch, tokens, config.joint_attention_dim),
                  "pooled_projections": zeros(batch, config.pooled_projection_dim), "timestep": zeros(batch),
                  "img_ids": zeros(seq, 3), "txt_ids": zeros(tokens, 3), "return_dict": False}
        if config.guidance_embeds:
            kwargs["guidance"] = zeros(batch)
        return (zeros(batch, seq, config.in_channels),), kwargs
    if kind == "SD3Transformer2DModel":
        tokens = text_tokens or SD3_TEXT_TOKENS
        return (zeros(batch, config.in_channels, h, w),), {
            "encoder_hidden_states": zeros(batch, tokens, config.joint_attention_dim),
            "pooled_projections": zeros(batch, config.pooled_projection_dim), "timestep": zeros(batch),
            "return_dict": False}
    context = zeros(batch, text_tokens or 77, config.cross_attention_dim)
    kwargs: dict[str, Any] = {"encoder_hidden_states": context}
    if config.addition_embed_type == "text_time":
        text_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": zeros(batch, text_dim), "time_ids": zeros(batch, 6)}
    return (zeros(batch, config.in_channels, h, w), torch.tensor(10, device=device)), kwargs


def _empty_denoiser(pipe):
    import torch

    from .denoiser import denoiser

    module = denoiser(pipe)
    with torch.device("meta"):  # buffers too (SD3's positional embedding), unlike accelerate's init_empty_weights
        return type(module).from_config(module.config)


def step_batch(pipe, guidance: float) -> int:
    """Images per denoiser forward of one prompt: 2 under classifier-free guidance, 1 for guidance-distilled Flux."""
    if type(pipe).__name__.startswith("Flux"):
        return 1  # FLUX.1's guidance is an embedding input, not a second (unconditional) batch
    return 2 if guidance > 1 else 1


def step_flops(pipe, height: int, width: int, batch: int = 2, text_tokens: int | None = None) -> dict[str, int]:
    """FLOPs of one denoiser forward (``batch`` 2 = one CFG step), by op, counted on the meta device."""
    import torch

    module = _empty_denoiser(pipe)
    args, kwargs = _step_inputs(module, batch, height, width, pipe.vae_scale_factor, "meta", text_tokens)
    with flop_counter() as counter, torch.no_grad():
        module(*args, **kwargs)
    by_op = {str(op).removeprefix("aten."): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return {**by_op, "total": int(counter.get_total_flops())}


def analytic_step_flops(pipe, height: int, width: int, batch: int = 2,
                        text_tokens: int | None = None) -> dict[str, int]:
    """The same count from layer shapes: convolutions and linear layers (hooks) and attention matmuls (from
    the query/key shapes each ``scaled_dot_product_attention`` call receives), not from ATen's formulas."""
    import torch
    import torch.nn.functional as F

    counts = {"conv": 0, "linear": 0, "attention": 0}

    def conv_hook(mod, args, out):
        k = mod.kernel_size[0] * mod.kernel_size[1]
        counts["conv"] += 2 * out.numel() * (mod.in_channels // mod.groups) * k

    def linear_hook(mod, args, out):
        counts["linear"] += 2 * out.numel() * mod.in_features

    sdpa = F.scaled_dot_product_attention

    def counting_sdpa(query, key, value, *args, **kwargs):
        # QK^T and AV: 2 matmuls of batch*heads*Lq*Lk*head_dim multiply-adds each
        counts["attention"] += 4 * query.shape[:-2].numel() * query.shape[-2] * key.shape[-2] * query.shape[-1]
        return sdpa(query, key, value, *args, **kwargs)

    module = _empty_denoiser(pipe)
    handles = []
    for sub in module.modules():
        if isinstance(sub, torch.nn.Conv2d):
            handles.append(sub.register_forward_hook(conv_hook))
        elif isinstance(sub, torch.nn.Linear):
            handles.append(sub.register_forward_hook(linear_hook))
    args, kwargs = _step_inputs(module, batch, height, width, pipe.vae_scale_factor, "meta", text_tokens)
    F.scaled_dot_product_attention = counting_sdpa
    try:
        with torch.no_grad():
            module(*args, **kwargs)
    finally:
        F.scaled_dot_product_attention = sdpa
        for h in handles:
            h.remove()
    return {**counts, "total": sum(counts.values())}


# -- device peak ------------------------------------------------------------------------------------
PEAK_DTYPES = ("fp32", "tf32", "fp16", "bf16", "fp8")


@dataclass
class Peak(Record):
    """Achievable dense-matmul throughput of a device in one dtype (FLOP/s): the best of ``repeats`` timings
    of ``products`` back-to-back n×n products between two synchronisations, over the sizes tried."""

    device: str
    dtype: str
    flops_per_s: float
    size: int
    seconds: float  # per product, at ``size``
    products: int = 1
    repeats: int = 1
    by_size: dict[str, float] = field(default_factory=dict)  # n -> best FLOP/s at that size


def peak_dtypes(device: str, capability: tuple[int, int] | None = None) -> list[str]:
    """The dtypes a matmul peak can be measured in on ``device`` (fp8 from sm89, tf32 and bf16 from sm80)."""
    if not device.startswith("cuda"):
        return ["fp32", "fp16", "bf16"]
    if capability is None:
        import torch

        capability = torch.cuda.get_device_capability(torch.device(device))
    out = ["fp32", "fp16"]
    if tuple(capability) >= (8, 0):
        out += ["tf32", "bf16"]
    if tuple(capability) >= (8, 9):
        out.append("fp8")
    return out


def _matmul(device: str, dtype: str, n: int):
    """A closure running one n×n×n product in ``dtype`` into a preallocated output."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)
    if dtype == "fp8":
        fp8 = torch.float8_e4m3fn
        a8, b8 = a.to(fp8), b.t().contiguous().to(fp8).t()  # _scaled_mm wants the second operand column-major
        one = torch.tensor(1.0, device=device)
        return lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    torch_dt = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    a, b = a.to(torch_dt), b.to(torch_dt)
    out = torch.empty(n, n, device=device, dtype=torch_dt)
    return lambda: torch.mm(a, b, out=out)


def _fits(device: str, dtype: str, n: int) -> bool:
    if not device.startswith("cuda"):
        return True
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return 4 * n * n * 4 < 0.5 * free  # fp32 staging copies plus operands and output, with room to spare


def _time_products(run, device: str, products: int) -> float:
    """Seconds for ``products`` back-to-back calls, read after one synchronisation (CUDA events on GPU)."""
    import torch

    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(products):
            run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    tick = time.perf_counter()
    for _ in range(products):
        run()
    synchronize(device)
    return time.perf_counter() - tick


def measure_peak(device: str = "cpu", dtype: str = "fp32", sizes: tuple[int, ...] | None = None,
                 min_time: float = 0.05, repeats: int = 5) -> Peak:
    """Best FLOP/s of square matmuls, measured the way GEMM benchmarks do.

    Per size: a warm-up, then ``repeats`` timings of as many back-to-back products as fill ``min_time``
    seconds between two synchronisations (CUDA events on a GPU), keeping the best: one product per
    synchronisation under-reads a GPU (the H100 read 344 instead of 740 TFLOP/s), and a median on a busy
    host under-reads a CPU.

    Args:
        dtype: ``fp32``, ``tf32`` (CUDA sm80+), ``fp16``, ``bf16`` or ``fp8`` (CUDA sm89+, ``torch._scaled_mm``).
        sizes: square sizes to try; default up to 8192 on CUDA (as memory allows), up to 2048 on CPU.
    """
    import torch

    choose("peak dtype", dtype, PEAK_DTYPES)
    if dtype in ("tf32", "fp8") and not device.startswith("cuda"):
        raise LabError(f"a {dtype} matmul peak needs a CUDA device (got {device!r}); CPU dtypes: fp32, fp16, bf16")
    on_cuda = device.startswith("cuda")
    sizes = sizes or ((2048, 4096, 8192) if on_cuda else (512, 1024, 2048))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    best, by_size = None, {}
    try:
        for n in sizes:
            if not _fits(device, dtype, n):
                continue
            run = _matmul(device, dtype, n)
            run()
            synchronize(device)
            once = _time_products(run, device, 1)
            products = max(1, math.ceil(min_time / max(once, 1e-9)))
            seconds = min(_time_products(run, device, products) / products for _ in range(repeats))
            rate = 2 * n**3 / seconds
            by_size[str(n)] = rate
            if best is None or rate > best.flops_per_s:
                best = Peak(device=device, dtype=dtype, flops_per_s=rate, size=n, seconds=seconds, products=products,
                            repeats=repeats)
            del run
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    if best is None:
        raise LabError(f"no matmul size in {sizes} fits in the free memory of {device}")
    best.by_size = by_size
    return best


def utilisation(achieved_flops_per_s: float, peak: Peak) -> float | None:
    """Achieved ÷ peak in percent; None when above 100 %: then the peak under-reads and no figure is honest."""
    pct = 100 * achieved_flops_per_s / peak.flops_per_s
    return pct if pct <= 100 else None


# -- per-stage FLOPs of a real pipeline call -------------------------------------------------------------
@dataclass
class StageFlops(Record):
    stage: str
    flops: int
    seconds: float
    achieved_flops_per_s: float
    utilisation_pct: float | None  # None: achieved more than the measured peak (peak unreliable)


@dataclass
class FlopsReport(Record):
    """FLOPs, time, achieved FLOP/s and utilisation per stage of one case."""

    model: str
    case: Case
    peak: Peak
    stages: list[StageFlops]
    step_flops: int  # one denoiser forward (lab.denoiser), counted on the meta device
    step_flops_analytic: int
    notes: list[str] = field(default_factory=list)

    renamed = {"unet_step_flops": "step_flops", "unet_step_flops_analytic": "step_flops_analytic"}

    def __post_init__(self) -> None:
        for s in self.stages:  # reports saved before the rename call the denoiser stage "unet"
            s.stage = canonical_stage(s.stage)

    def to_frame(self):
        import pandas as pd

        frame = pd.DataFrame([s.to_dict() for s in self.stages]).set_index("stage")
        frame["gflops"] = frame.pop("flops") / 1e9
        frame["achieved_gflops_per_s"] = frame.pop("achieved_flops_per_s") / 1e9
        return frame[["gflops", "seconds", "achieved_gflops_per_s", "utilisation_pct"]]

    def to_markdown(self) -> str:
        head = (f"peak {self.peak.flops_per_s / 1e9:.1f} GFLOP/s ({self.peak.dtype} matmul {self.peak.size}², "
                f"{self.peak.device}); denoiser step {self.step_flops / 1e9:.2f} GFLOP "
                f"(analytic {self.step_flops_analytic / 1e9:.2f})\n\n")
        warn = "" if self.peak_reliable else "\n\n" + next(n for n in self.notes if n.startswith("peak unreliable"))
        return head + self.to_frame().round(3).to_markdown() + warn

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    @property
    def peak_reliable(self) -> bool:
        return all(s.utilisation_pct is not None for s in self.stages)

    def stage(self, name: str) -> StageFlops:
        return next(s for s in self.stages if s.stage == name)


def count_stage_flops(pipe, case: Case) -> dict[str, int]:
    """FLOPs per stage (text_encoder, denoiser, vae_decode) of one real call of ``case``."""
    import torch

    from .timing import StageTimer

    counter = flop_counter()
    totals: dict[str, int] = {}
    marks: dict[str, int] = {}

    def listener(event: str, stage: str) -> None:
        key = "denoiser" if is_step_stage(stage) else stage
        now = counter.get_total_flops()
        if event == "begin":
            marks[key] = now
        else:
            totals[key] = totals.get(key, 0) + now - marks.pop(key)

    with StageTimer(pipe, device=str(pipe.device), listener=listener) as timer, counter:
        timer.measure(pipe, generator=torch.Generator("cpu").manual_seed(case.seed), **case.pipeline_kwargs())
    return totals


def matmul_dtype(pipe) -> str:
    """The dtype whose matmul peak bounds ``pipe``'s denoiser: its weights' dtype, tf32 for fp32 on TF32 tensor cores."""
    import torch

    from .denoiser import denoiser
    from .env import DTYPES, dtype_name

    dtype = dtype_name(denoiser(pipe).dtype)
    dtype = dtype if dtype in DTYPES else "fp32"  # no matmul peak for other dtypes: compare against fp32
    if dtype == "fp32" and str(pipe.device).startswith("cuda") and torch.backends.cuda.matmul.allow_tf32:
        dtype = "tf32"  # fp32 matmuls run on TF32 tensor cores: their peak is the honest ceiling
    return dtype


def flops_report(pipe, case: Case, *, stage_seconds: dict[str, float] | None = None, peak: Peak | None = None,
                 repeats: int = 3) -> FlopsReport:
    """Count FLOPs per stage and set them against measured stage times and the device peak.

    Args:
        stage_seconds: median seconds per stage (``text_encoder``, ``denoiser``, ``vae_decode``), e.g.
            from a benchmark of the same case; measured here (warm-up + ``repeats``) when None.
    """
    import torch

    from .models import default_size
    from .timing import StageTimer

    device = str(pipe.device)
    dtype = matmul_dtype(pipe)
    if stage_seconds is None:
        runs = []
        with StageTimer(pipe, device=device) as timer:
            for i in range(repeats + 1):
                _, t = timer.measure(pipe, generator=torch.Generator("cpu").manual_seed(case.seed),
                                     **case.pipeline_kwargs())
                if i:
                    runs.append(t)
        med = statistics.median
        stage_seconds = {"text_encoder": med(r.text_encoder for r in runs), "denoiser": med(r.denoiser for r in runs),
                         "vae_decode": med(r.vae_decode for r in runs)}
    flops = count_stage_flops(pipe, case)
    peak = peak or measure_peak(device, dtype)
    size = case.height or default_size(pipe)
    batch = step_batch(pipe, case.guidance)
    stages = []
    for name in ("text_encoder", "denoiser", "vae_decode"):
        seconds = stage_seconds.get(name, 0.0)
        rate = flops.get(name, 0) / seconds if seconds > 0 else 0.0
        stages.append(StageFlops(name, int(flops.get(name, 0)), seconds, rate, utilisation(rate, peak)))
    notes = ["FLOPs count matmul, convolution and attention ops (2 per multiply-add); element-wise ops are "
             "not counted, so utilisation of norm/activation-heavy stages is understated."]
    over = [s.stage for s in stages if s.utilisation_pct is None]
    total_flops = sum(s.flops for s in stages)
    total_seconds = sum(s.seconds for s in stages)
    rate = total_flops / total_seconds if total_seconds else 0.0
    stages.append(StageFlops("total", total_flops, total_seconds, rate, utilisation(rate, peak)))
    if over:
        notes.append(f"peak unreliable: {', '.join(over)} achieved more than the measured {peak.dtype} peak "
                     f"({peak.flops_per_s / 1e12:.3g} TFLOP/s), so no utilisation is reported (a busy host or too "
                     "few products per synchronisation under-reads a peak)")
    return FlopsReport(
        model=getattr(pipe, "lab_model", type(pipe).__name__),
        case=case,
        peak=peak,
        stages=stages,
        step_flops=step_flops(pipe, size, case.width or size, batch)["total"],
        step_flops_analytic=analytic_step_flops(pipe, size, case.width or size, batch)["total"],
        notes=notes,
    )
