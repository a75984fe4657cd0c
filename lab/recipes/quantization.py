"""Quantization recipes: optimum-quanto per component (weights, optionally calibrated activations), torchao
int8 weight-only and float8 dynamic, bitsandbytes 8-/4-bit, and diffusers' layerwise casting (float8 storage,
upcast per layer); ``denoiser`` names the UNet or the transformer."""

from __future__ import annotations

from .base import (COMPONENTS, Recipe, all_of, fits_component, modules_of, needs_capability, needs_cuda, needs_package,
                   needs_unet, slot_component)

QUANTO_WEIGHTS = {"int8": "qint8", "int4": "qint4", "fp8": "qfloat8"}
QUANTO_ACTIVATIONS = {"int8": "qint8", "fp8": "qfloat8"}
LAYERWISE_COMPONENTS = {short: comp for short, comp in COMPONENTS.items() if short != "text"}


def _calibration_cases(pipe, cases):
    from ..cases import load_prompts

    base = list(cases) if cases else load_prompts("seed002")
    return [c.with_overrides(steps=2) for c in base]


def _quanto(component: str, weights: str, activations: str | None):
    def apply(pipe, cases):
        import optimum.quanto as q
        import torch

        modules = [m for _, m in modules_of(pipe, "denoiser" if component == "unet" else component)]
        for module in modules:
            q.quantize(module, weights=getattr(q, QUANTO_WEIGHTS[weights]),
                       activations=getattr(q, QUANTO_ACTIVATIONS[activations]) if activations else None)
        if activations:  # ranges of activations come from running the prompt set (quanto's calibration)
            with q.Calibration(momentum=0.9), torch.no_grad():
                for case in _calibration_cases(pipe, cases):
                    pipe(generator=torch.Generator("cpu").manual_seed(case.seed), **case.pipeline_kwargs())
        for module in modules:
            q.freeze(module)

    return apply


def _torchao_int8(pipe, cases):
    import torchao.quantization as tq

    from ..denoiser import denoiser

    config = tq.Int8WeightOnlyConfig() if hasattr(tq, "Int8WeightOnlyConfig") else tq.int8_weight_only()
    tq.quantize_(denoiser(pipe), config)


def _torchao_fp8(pipe, cases):
    import torchao.quantization as tq

    from ..denoiser import denoiser

    # Per-row scales for activations and weights: the float8 counterpart of diffusion-fast's int8 dynamic
    # step, run by Hopper/Ada tensor cores through torch._scaled_mm.
    tq.quantize_(denoiser(pipe), tq.Float8DynamicActivationFloat8WeightConfig(granularity=tq.PerRow()))


def _bnb(bits: int):
    def apply(pipe, cases):
        import bitsandbytes as bnb
        import torch

        from ..denoiser import denoiser

        module = denoiser(pipe)
        device = module.device
        for parent in list(module.modules()):
            for child_name, child in list(parent.named_children()):
                if not isinstance(child, torch.nn.Linear):
                    continue
                bias = child.bias is not None
                if bits == 8:
                    new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=bias,
                                              has_fp16_weights=False, threshold=6.0)
                    new.weight = bnb.nn.Int8Params(child.weight.data.cpu(), requires_grad=False,
                                                   has_fp16_weights=False)
                else:
                    new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=bias,
                                            compute_dtype=child.weight.dtype, quant_type="nf4")
                    new.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4")
                if bias:
                    new.bias = torch.nn.Parameter(child.bias.data.cpu(), requires_grad=False)
                setattr(parent, child_name, new.to(device))  # moving to CUDA quantizes the weights

    return apply


def _layerwise(component: str, compute: str | None):
    def apply(pipe, cases):
        import torch

        from .._quiet import quiet_diffusers
        from ..env import torch_dtype
        from .precision import _entry_modules, _hook_casts

        for name, module in modules_of(pipe, "denoiser" if component == "unet" else component):
            if compute is not None:
                with quiet_diffusers():
                    module.to(torch_dtype(compute))
            # computes in the dtype the component had (fp32, or what a precision recipe set) unless told
            compute_dtype = next(p.dtype for p in module.parameters() if p.is_floating_point())
            # diffusers' default skips (norms, position embeddings, proj_in/out) and the model's own
            module.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype)
            for entry in _entry_modules(name, module):
                if entry is not None:
                    entry.lab_compute_dtype = compute_dtype
        if compute is not None:  # a mixed plan: the other components' tensors cross into this dtype
            _hook_casts(pipe)

    return apply


def layerwise_name(short: str, compute: str | None = None) -> str:
    """A layerwise-casting recipe's name: float8 storage for one component, computed in ``compute`` if given."""
    return f"layerwise-fp8-{short}" + (f"-{compute}" if compute else "")


def quanto_name(short: str, weights: str, activations: str | None = None) -> str:
    """A quanto recipe's name: component short name, weight and (optional) activation precision."""
    return f"quanto-{short}-{weights}w" + (f"-{activations}a" if activations else "")


def recipes() -> list[Recipe]:
    out: list[Recipe] = []
    quanto_needs = needs_package("optimum.quanto", "pip install optimum-quanto")
    for short, comp in COMPONENTS.items():
        what = "the denoiser's (UNet or transformer)" if comp == "denoiser" else f"{comp}"
        for w in QUANTO_WEIGHTS:
            for a in (None, *QUANTO_ACTIVATIONS):
                name = quanto_name(short, w, a)
                acts = f", {a} activations calibrated on the prompt set" if a else ""
                out.append(Recipe(name, f"optimum-quanto: {what} weights {w}{acts}, frozen", "quantization",
                                  "optimum-quanto", slots=(f"quant:{slot_component(comp)}",),
                                  apply_fn=_quanto(comp, w, a), check_fn=quanto_needs,
                                  fit_fn=needs_unet(name) if comp == "unet" else fits_component(comp)))
    torchao = needs_package("torchao", "pip install torchao")
    out.append(Recipe("torchao-int8wo", "torchao int8 weight-only quantization of the denoiser", "quantization",
                      "torchao", slots=("quant:denoiser",), apply_fn=_torchao_int8, check_fn=torchao))
    out.append(Recipe("torchao-fp8dq", "torchao float8 dynamic activations and weights (per-row scales) in the "
                      "denoiser's linear layers; pair with bf16 and compile", "quantization", "CUDA >= sm89, torchao",
                      slots=("quant:denoiser",), apply_fn=_torchao_fp8,
                      check_fn=all_of(needs_capability((8, 9), "torchao float8"), torchao)))
    # the diffusers models only: on a transformers text encoder the hooks fail on CPU (CLIP, transformers 5.24:
    # '"normal_kernel_cpu" not implemented for Float8_e4m3fn')
    for short, comp in LAYERWISE_COMPONENTS.items():
        what = "the denoiser's (UNet or transformer)" if comp == "denoiser" else f"{comp}'s"
        for compute in (None, "bf16"):
            name = layerwise_name(short, compute)
            in_what = "in bf16 (the component cast to bf16 first)" if compute else "in the component's own dtype"
            out.append(Recipe(name, f"diffusers layerwise casting: {what} weights stored in float8 (e4m3), each "
                              f"layer upcast to compute {in_what}", "quantization",
                              slots=(f"quant:{slot_component(comp)}",)
                              + ((f"dtype:{slot_component(comp)}",) if compute else ()),
                              apply_fn=_layerwise(comp, compute),
                              fit_fn=needs_unet(name) if comp == "unet" else fits_component(comp)))
    for short in ("denoiser", "unet"):
        for bits in (8, 4):
            name = f"bnb-{short}-{bits}bit"
            out.append(Recipe(name, f"bitsandbytes {bits}-bit linear layers of the {short}"
                              + (" (NF4)" if bits == 4 else " (LLM.int8)"), "quantization", "CUDA, bitsandbytes",
                              slots=("quant:denoiser",), apply_fn=_bnb(bits),
                              check_fn=all_of(needs_package("bitsandbytes", "pip install bitsandbytes"),
                                              needs_cuda("bitsandbytes")),
                              fit_fn=needs_unet(name) if short == "unet" else None))
    return out


# quanto's quantized activations (QBytesTensor) do not split along the last dimension the way the fused
# attention processor splits its fused projection's output: the query then keeps all three projections and
# the reshape fails (shape '[2, -1, 8, 120]' is invalid ...). The text encoders are never fused.
INCOMPATIBLE: dict[frozenset[str], str] = {
    frozenset(("fused-qkv", name)): "quanto's quantized activations break the split of the fused QKV projection "
    "(the query keeps all three projections); use fused-qkv with weight-only quantization"
    for name in (quanto_name(short, w, a)
                 for short in ("denoiser", "unet", "vae") for w in QUANTO_WEIGHTS for a in QUANTO_ACTIVATIONS)
}
