"""Runtime recipes: the UNet exported to another CPU runtime (OpenVINO, ONNX Runtime) and run there in place.

The pipeline keeps calling ``pipe.unet``, now a ``lab.runtimes.RuntimeDenoiser``: the first call exports the
UNet (the first call's extra cost: conversion and compilation), later calls run in the runtime. Measured here
before these recipes (issue 21): one sd15-arch UNet call at 256², batch 2, OpenVINO with its default bf16
inference 0.53-0.59 s against 0.75-0.84 s for lab's best eager rung (bf16 + channels-last), conversion and
compilation 23-24 s; ``torch.compile(backend="openvino")`` fails under torch 2.13, so ``convert_model`` is used.
"""

from __future__ import annotations

from ..env import RecipeEnv
from .base import Check, Recipe, all_of, needs_denoiser, needs_package
from .compile import DENOISER_COMPILES, UNET_COMPILES
from .quantization import QUANTO_ACTIVATIONS, QUANTO_WEIGHTS, quanto_name

# recipe name -> (backend in lab.runtimes.BACKENDS, packages it needs, what it does); torch.onnx.export's
# TorchScript exporter (dynamo=False) needs onnx, not onnxscript
RUNTIMES = {
    "openvino-denoiser": ("openvino", ("openvino",), "the UNet converted by openvino.convert_model and run by "
                          "OpenVINO on the CPU at its default inference precision (bf16 where the CPU has AMX or "
                          "AVX-512 BF16, else fp32)"),
    "openvino-denoiser-f32": ("openvino-f32", ("openvino",), "the UNet run by OpenVINO on the CPU with fp32 "
                              "arithmetic (INFERENCE_PRECISION_HINT f32)"),
    "onnxruntime-denoiser": ("onnxruntime", ("onnxruntime", "onnx"), "the UNet exported by torch.onnx.export and run by "
                             "ONNX Runtime's CPU provider (fp32)"),
}


def _cpu_only(name: str) -> Check:
    def check(env: RecipeEnv) -> str | None:
        if env.device != "cpu":
            return (f"{name} runs the UNet on the CPU runtime; on {env.device} it would move every step off the "
                    "GPU (use the GPU's own recipes: fp16, compile-denoiser-reduce-overhead)")
        return None

    return check


def _install(backend: str):
    def apply(pipe, cases):
        from ..runtimes import BACKENDS, install

        install(pipe, BACKENDS[backend])

    return apply


def recipes() -> list[Recipe]:
    fit = needs_denoiser("unet", "the export covers a UNet's call (sample, timestep, text states, SDXL's added "
                                 "conditioning); a transformer's packed inputs are not exported here")
    return [Recipe(name, f"{text}; the first call exports and compiles (seconds to tens of seconds)", "runtime",
                   f"CPU + {' + '.join(packages)}", slots=("runtime:denoiser",), apply_fn=_install(backend),
                   check_fn=all_of(_cpu_only(name), *(needs_package(p, f"pip install {p}, or pip install -e "
                                                                       "'.[runtimes]'") for p in packages)),
                   fit_fn=fit)
            for name, (backend, packages, text) in RUNTIMES.items()]


_QUANTO = [quanto_name(short, w, a) for short in ("denoiser", "unet") for w in QUANTO_WEIGHTS
           for a in (None, *QUANTO_ACTIVATIONS)]
INCOMPATIBLE: dict[frozenset[str], str] = {
    **{frozenset((runtime, other)): "the runtime replaces the torch UNet that torch.compile would compile"
       for runtime in RUNTIMES for other in (*UNET_COMPILES, *DENOISER_COMPILES)},
    **{frozenset((runtime, other)): "the exporters trace plain torch layers, not quantized weight tensors"
       for runtime in RUNTIMES for other in (*_QUANTO, "torchao-int8wo", "torchao-fp8dq", "bnb-denoiser-8bit",
                                              "bnb-denoiser-4bit", "bnb-unet-8bit", "bnb-unet-4bit")},
}
