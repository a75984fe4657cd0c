"""Attention recipes: the attention processor (SDPA, plain math, slicing, xFormers) and fused QKV projections."""

from __future__ import annotations

from .base import Recipe, all_of, needs_cuda, needs_package


def _processor(kind: str):
    def apply(pipe, cases):
        from diffusers.models import attention_processor as ap

        proc = {"sdpa": ap.AttnProcessor2_0, "math": ap.AttnProcessor}[kind]
        for name in ("unet", "vae"):
            module = getattr(pipe, name, None)
            if module is not None and hasattr(module, "set_attn_processor"):
                module.set_attn_processor(proc())

    return apply


def recipes() -> list[Recipe]:
    return [
        Recipe("sdpa", "PyTorch scaled_dot_product_attention (diffusers' default)", "attention",
               slots=("attention",), apply_fn=_processor("sdpa")),
        Recipe("math-attention", "plain attention: explicit QK^T, softmax and AV matmuls", "attention",
               slots=("attention",), apply_fn=_processor("math")),
        Recipe("attention-slicing",
               "attention in slices: saves memory only against math attention (with SDPA: slower, no saving)",
               "attention",
               slots=("attention",), apply_fn=lambda pipe, cases: pipe.enable_attention_slicing("auto")),
        Recipe("xformers", "xFormers memory-efficient attention", "attention", "CUDA, xformers",
               slots=("attention",), apply_fn=lambda pipe, cases: pipe.enable_xformers_memory_efficient_attention(),
               check_fn=all_of(needs_package("xformers", "pip install xformers"), needs_cuda("xFormers"))),
        Recipe("fused-qkv", "fused query/key/value projections in UNet and VAE attention", "fusion",
               slots=("fusion",), apply_fn=lambda pipe, cases: pipe.fuse_qkv_projections()),
    ]


INCOMPATIBLE: dict[frozenset[str], str] = {
    frozenset(("fused-qkv", other)): "fused QKV installs its own fused SDPA attention processor"
    for other in ("math-attention", "attention-slicing", "xformers")
}
