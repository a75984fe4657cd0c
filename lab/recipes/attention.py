"""Attention recipes: the attention computation (SDPA, plain math, slicing, xFormers) and fused QKV projections.

A UNet and the VAE take diffusers attention *processors*; a transformer denoiser (Flux, SD3) takes an attention
*backend* of diffusers' dispatcher (``set_attention_backend``), which its processors call. ``sdpa`` and
``math-attention`` set whichever the component takes; the ``attn-*`` recipes name one dispatcher backend each
(FlexAttention, FlashAttention-2/3, SageAttention, cuDNN, ...), checked for its package and GPU, and refused on a
UNet, where no processor calls the dispatcher.
"""

from __future__ import annotations

from .base import Check, Recipe, all_of, needs_capability, needs_cuda, needs_denoiser, needs_package

BACKENDS = {"sdpa": "native", "math": "_native_math"}  # diffusers' dispatcher names


def _processor(kind: str):
    def apply(pipe, cases):
        from diffusers.models import attention_processor as ap

        from .._quiet import quiet_diffusers
        from ..denoiser import denoiser, denoiser_name

        proc = {"sdpa": ap.AttnProcessor2_0, "math": ap.AttnProcessor}[kind]
        if denoiser_name(pipe) == "transformer":
            set_backend(denoiser(pipe), BACKENDS[kind])
        else:
            pipe.unet.set_attn_processor(proc())
        vae = getattr(pipe, "vae", None)
        if vae is not None and hasattr(vae, "set_attn_processor"):
            vae.set_attn_processor(proc())

    return apply


def set_backend(module, backend: str) -> None:
    """``module.set_attention_backend(backend)`` without changing the process-wide default backend."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    from .._quiet import quiet_diffusers

    # set_attention_backend also makes the backend process-wide (the default of every processor that
    # names none): put the default back, so a pipeline loaded after this one is not changed by it
    default = _AttentionBackendRegistry.get_active_backend()[0]
    with quiet_diffusers():  # "attention backends are an experimental feature"
        module.set_attention_backend(backend)
    _AttentionBackendRegistry.set_active_backend(default)


def backend_of(module) -> str | None:
    """The dispatcher backend the module's attention processors name (None: the process default)."""
    names = {getattr(getattr(m, "processor", None), "_attention_backend", None) for m in module.modules()
             if hasattr(m, "processor")}
    names.discard(None)
    return getattr(next(iter(names)), "value", None) if len(names) == 1 else None


def _hub_kernel(repo: str) -> Check:
    def check(env) -> str | None:
        from ..models import _hub_offline, hub_reachable

        if _hub_offline():
            return f"the kernel is downloaded from the Hugging Face Hub ({repo}) and HF_HUB_OFFLINE is set"
        if not hub_reachable():
            return f"the kernel is downloaded from the Hugging Face Hub ({repo}), which cannot be reached"
        return None

    return check


_HALF = "; runs in bf16/fp16 only (pair with bf16)"
# recipe -> (diffusers dispatcher name, what it is, needs, check). Requirements read from diffusers 0.42.1's
# attention_dispatch.py (_check_attention_backend_requirements and each backend's constraints) and the kernels'
# own: FlashAttention-2 and PyTorch's flash/cuDNN kernels need Ampere (sm80), FA3 Hopper (sm90).
BACKEND_RECIPES: dict[str, tuple[str, str, str, Check | None]] = {
    "attn-native": ("native", "PyTorch SDPA, left to choose its kernel", "", None),
    "attn-math": ("_native_math", "PyTorch SDPA's plain math kernel", "", None),
    "attn-flex": ("flex", "PyTorch FlexAttention (compiled block-sparse kernel; eager on CPU is a reference "
                  "implementation)", "torch >= 2.5", None),
    "attn-flash": ("flash", "FlashAttention-2 (flash-attn package)" + _HALF, "CUDA >= sm80, flash-attn >= 2.6.3",
                   all_of(needs_package("flash_attn", "pip install flash-attn>=2.6.3"),
                          needs_capability((8, 0), "FlashAttention-2"))),
    "attn-flash3": ("_flash_3", "FlashAttention-3 built from source (flash_attn_3)" + _HALF, "CUDA >= sm90, "
                    "flash_attn_3", all_of(needs_package("flash_attn_3", "build FlashAttention-3 (hopper/) from "
                                                         "source"), needs_capability((9, 0), "FlashAttention-3"))),
    "attn-flash3-hub": ("_flash_3_hub", "FlashAttention-3 from the kernels hub (kernels-community/flash-attn3)"
                        + _HALF, "CUDA >= sm90, kernels >= 0.12, the Hugging Face Hub",
                        all_of(_hub_kernel("kernels-community/flash-attn3"),
                               needs_capability((9, 0), "FlashAttention-3"),
                               needs_package("kernels", "pip install kernels>=0.12"))),
    "attn-sage": ("sage", "SageAttention (int8 QK, fp16 PV)" + _HALF, "CUDA >= sm80, sageattention >= 2.1.1",
                  all_of(needs_package("sageattention", "pip install sageattention>=2.1.1"),
                         needs_capability((8, 0), "SageAttention"))),
    "attn-cudnn": ("_native_cudnn", "PyTorch SDPA's cuDNN kernel" + _HALF, "CUDA >= sm80",
                   needs_capability((8, 0), "cuDNN attention")),
    "attn-native-flash": ("_native_flash", "PyTorch SDPA's built-in FlashAttention-2 kernel" + _HALF,
                          "CUDA >= sm80", needs_capability((8, 0), "PyTorch's flash attention kernel")),
}
# Fastest first, for picking the best backend a machine can run (lab.gpucheck).
BACKEND_PREFERENCE = ("attn-flash3", "attn-flash3-hub", "attn-sage", "attn-flash", "attn-cudnn",
                      "attn-native-flash", "attn-native")
_NO_BACKEND = ("set_attention_backend has no effect on a UNet: its attention processors (AttnProcessor2_0) call "
               "SDPA directly, not diffusers' attention dispatcher; use sdpa or math-attention")


def best_backend(env) -> str:
    """The fastest attention-backend recipe this machine can run (``attn-native`` always can)."""
    return next(name for name in BACKEND_PREFERENCE if BACKEND_RECIPES[name][3] is None
                or not BACKEND_RECIPES[name][3](env))


def _backend(backend: str):
    def apply(pipe, cases):
        from ..denoiser import denoiser

        set_backend(denoiser(pipe), backend)

    return apply


def _fuse_qkv(pipe, cases):
    from ..denoiser import denoiser

    if hasattr(pipe, "fuse_qkv_projections"):  # SD pipelines: UNet and VAE, with the pipeline's own flags
        pipe.fuse_qkv_projections()
        return
    denoiser(pipe).fuse_qkv_projections()
    if getattr(pipe, "vae", None) is not None:
        pipe.vae.fuse_qkv_projections()


_UNET_ONLY = "diffusers slices (and xFormers-patches) only UNet/VAE attention processors, not a transformer's"


def _fusable(kind) -> str | None:
    # measured on sd35m-arch (CPU, diffusers 0.42.1): the fused joint processor fails in SD3.5's dual-attention
    # blocks (AttributeError: 'NoneType' object has no attribute 'ndim'), so it is refused before any work
    if kind.denoiser_class == "SD3Transformer2DModel":
        return ("diffusers' fused QKV processor fails on SD3.5's dual-attention blocks "
                "('NoneType' object has no attribute 'ndim', measured on sd35m-arch)")
    return None


def recipes() -> list[Recipe]:
    return [
        Recipe("sdpa", "PyTorch scaled_dot_product_attention (diffusers' default; the 'native' backend on a "
               "transformer)", "attention", slots=("attention",), apply_fn=_processor("sdpa")),
        Recipe("math-attention", "plain attention: explicit QK^T, softmax and AV matmuls (the '_native_math' "
               "backend on a transformer)", "attention", slots=("attention",), apply_fn=_processor("math")),
        Recipe("attention-slicing",
               "attention in slices: saves memory only against math attention (with SDPA: slower, no saving)",
               "attention", slots=("attention",),
               apply_fn=lambda pipe, cases: pipe.enable_attention_slicing("auto"),
               fit_fn=needs_denoiser("unet", _UNET_ONLY)),
        Recipe("xformers", "xFormers memory-efficient attention", "attention", "CUDA, xformers",
               slots=("attention",), apply_fn=lambda pipe, cases: pipe.enable_xformers_memory_efficient_attention(),
               check_fn=all_of(needs_package("xformers", "pip install xformers"), needs_cuda("xFormers")),
               fit_fn=needs_denoiser("unet", _UNET_ONLY)),
        *(Recipe(name, f"diffusers attention backend {backend!r}: {what}", "attention", needs,
                 slots=("attention",), apply_fn=_backend(backend), check_fn=check,
                 fit_fn=needs_denoiser("transformer", _NO_BACKEND))
          for name, (backend, what, needs, check) in BACKEND_RECIPES.items()),
        Recipe("fused-qkv", "fused query/key/value projections in the denoiser's and the VAE's attention", "fusion",
               slots=("fusion",), apply_fn=_fuse_qkv, fit_fn=_fusable),
    ]


INCOMPATIBLE: dict[frozenset[str], str] = {
    frozenset(("fused-qkv", other)): "fused QKV installs its own fused SDPA attention processor"
    for other in ("math-attention", "attention-slicing", "xformers")
}
