"""Attention recipes: the attention computation (SDPA, plain math, slicing, xFormers) and fused QKV projections.

A UNet and the VAE take diffusers attention *processors*; a transformer denoiser (Flux, SD3) takes an attention
*backend* of diffusers' dispatcher (``set_attention_backend``), which its processors call. ``sdpa`` and
``math-attention`` set whichever the component takes.
"""

from __future__ import annotations

from .base import Recipe, all_of, needs_cuda, needs_denoiser, needs_package

BACKENDS = {"sdpa": "native", "math": "_native_math"}  # diffusers' dispatcher names


def _processor(kind: str):
    def apply(pipe, cases):
        from diffusers.models import attention_processor as ap

        from .._quiet import quiet_diffusers
        from ..denoiser import denoiser, denoiser_name

        proc = {"sdpa": ap.AttnProcessor2_0, "math": ap.AttnProcessor}[kind]
        if denoiser_name(pipe) == "transformer":
            from diffusers.models.attention_dispatch import _AttentionBackendRegistry

            # set_attention_backend also makes the backend process-wide (the default of every processor that
            # names none): put the default back, so a pipeline loaded after this one is not changed by it
            default = _AttentionBackendRegistry.get_active_backend()[0]
            with quiet_diffusers():  # "attention backends are an experimental feature"
                denoiser(pipe).set_attention_backend(BACKENDS[kind])
            _AttentionBackendRegistry.set_active_backend(default)
        else:
            pipe.unet.set_attn_processor(proc())
        vae = getattr(pipe, "vae", None)
        if vae is not None and hasattr(vae, "set_attn_processor"):
            vae.set_attn_processor(proc())

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
        Recipe("fused-qkv", "fused query/key/value projections in the denoiser's and the VAE's attention", "fusion",
               slots=("fusion",), apply_fn=_fuse_qkv, fit_fn=_fusable),
    ]


INCOMPATIBLE: dict[frozenset[str], str] = {
    frozenset(("fused-qkv", other)): "fused QKV installs its own fused SDPA attention processor"
    for other in ("math-attention", "attention-slicing", "xformers")
}
