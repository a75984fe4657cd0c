"""Precision recipes: the whole pipeline or one component in fp32 / fp16 / bf16, and TF32 matmuls."""

from __future__ import annotations

from collections.abc import Sequence

from ..env import RecipeEnv
from .base import (COMPONENTS, PARTS, Check, Recipe, fits_component, modules_of, needs_capability, needs_unet,
                   slot_component)


def _cast_inputs(module, args, kwargs):
    """Forward pre-hook: floating-point tensor inputs follow the module's dtype (mixed-precision plans)."""
    import torch

    # a layerwise-cast module stores float8 weights: its inputs follow the dtype it computes in
    dtype = getattr(module, "lab_compute_dtype", None) or next(module.parameters()).dtype

    def cast(x):
        return x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != dtype else x

    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def _entry_modules(name: str, module):
    """Modules through which tensors enter a component (``vae.decode`` bypasses ``vae.forward``)."""
    if name == "vae":
        return [module.post_quant_conv, module.decoder, module.encoder, module.quant_conv]
    return [module]


def _hook_casts(pipe) -> None:
    """Make every component cast its floating inputs to its own dtype (once per pipeline)."""
    if getattr(pipe, "lab_cast_hooks", False):
        return
    for part in PARTS:
        for name, module in modules_of(pipe, part):
            for entry in _entry_modules(name, module):
                if entry is not None:
                    entry.register_forward_pre_hook(_cast_inputs, with_kwargs=True)
    pipe.lab_cast_hooks = True


def _set_dtype(components: Sequence[str], dtype_name: str):
    def apply(pipe, cases):
        from .._quiet import quiet_diffusers
        from ..env import torch_dtype

        dtype = torch_dtype(dtype_name)
        for comp in components:
            for _, module in modules_of(pipe, "denoiser" if comp == "unet" else comp):
                with quiet_diffusers():
                    module.to(dtype)
        if len(components) < len(PARTS):  # a mixed plan: tensors cross between dtypes
            _hook_casts(pipe)

    return apply


def _precision_check(dtype_name: str) -> Check:
    def check(env: RecipeEnv) -> str | None:
        if dtype_name == "fp16" and env.device == "cpu":
            return None  # runs (slowly) on CPU; the comparison shows the cost
        if dtype_name == "bf16" and env.cuda and env.cuda_capability and env.cuda_capability < (8, 0):
            return f"bf16 needs compute capability >= 8.0 (this GPU is {env.cuda_capability})"
        return None

    return check


def _tf32(pipe, cases):
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True  # process-wide: TF32 is a global switch in torch
    torch.backends.cudnn.allow_tf32 = True


def recipes() -> list[Recipe]:
    out: list[Recipe] = []
    all_dtype = tuple(f"dtype:{c}" for c in PARTS)
    for dt, label in (("fp32", "float32"), ("fp16", "float16"), ("bf16", "bfloat16")):
        out.append(Recipe(dt, f"every component in {label}", "precision", slots=all_dtype,
                          apply_fn=_set_dtype(PARTS, dt), check_fn=_precision_check(dt)))
        for short, comp in COMPONENTS.items():
            name = f"{dt}-{short}"
            what = "the denoiser (UNet or transformer)" if comp == "denoiser" else comp
            out.append(Recipe(name, f"{what} in {label} (other components unchanged)", "precision",
                              slots=(f"dtype:{slot_component(comp)}",), apply_fn=_set_dtype([comp], dt),
                              check_fn=_precision_check(dt),
                              fit_fn=needs_unet(name) if comp == "unet" else fits_component(comp)))
    out.append(Recipe("tf32", "TF32 tensor-core matmuls for fp32 work (process-wide switch)", "precision",
                      "CUDA >= sm80", slots=("tf32",), apply_fn=_tf32, check_fn=needs_capability((8, 0), "TF32")))
    return out


INCOMPATIBLE: dict[frozenset[str], str] = {}
