"""Load-time quantization recipes: what users pass to ``from_pretrained`` (``quantization_config=
PipelineQuantizationConfig(quant_mapping=...)`` with quanto, torchao or bitsandbytes), and a GGUF transformer
loaded with ``from_single_file(..., quantization_config=GGUFQuantizationConfig(...))``.

Each recipe's ``load_fn`` says what to pass to the loader (``quant_mapping`` entries or whole ``components``);
nothing is applied after the load. They need weights on disk (``lab.loadtime.load_refusal``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from .base import Recipe, all_of, needs_cuda, needs_denoiser, needs_package, needs_unet
from .quantization import QUANTO_WEIGHTS


def _component(folder: Path, component: str) -> str:
    from ..loadtime import denoiser_folder

    return denoiser_folder(folder) if component == "denoiser" else component


def _quanto(component: str, weights: str):
    def load(folder: Path, dtype) -> dict[str, Any]:
        from diffusers import QuantoConfig

        from ..loadtime import QUANTO_LOAD_WEIGHTS

        return {"quant_mapping": {_component(folder, component): QuantoConfig(QUANTO_LOAD_WEIGHTS[weights])}}

    return load


def _torchao(folder: Path, dtype) -> dict[str, Any]:
    from diffusers import TorchAoConfig
    from torchao.quantization import Int8WeightOnlyConfig

    return {"quant_mapping": {_component(folder, "denoiser"): TorchAoConfig(Int8WeightOnlyConfig())}}


def _bnb(bits: int):
    def load(folder: Path, dtype) -> dict[str, Any]:
        from diffusers import BitsAndBytesConfig

        config = BitsAndBytesConfig(load_in_8bit=True) if bits == 8 else BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        return {"quant_mapping": {_component(folder, "denoiser"): config}}

    return load


def _gguf(qtype: str):
    def load(folder: Path, dtype) -> dict[str, Any]:
        from ..loadtime import gguf_transformer

        return {"components": {"transformer": gguf_transformer(folder, qtype, dtype)}}

    return load


def _loaded_with(name: str):
    """A load-time recipe's ``apply``: it acted while loading, so it only checks that the pipeline was loaded so."""
    def apply(pipe, cases):
        from .._checks import LabError

        if name not in getattr(pipe, "lab_loaded_with", ()):
            raise LabError(f"{name} quantizes while the pipeline loads; load with it (lab.prepare(model, "
                           f"{name!r}) or lab.load_pipeline(model, recipe={name!r})) instead of applying it after")

    return apply


_GGUF_FIT = "GGUF checkpoints load into a transformer (from_single_file); lab exports only a transformer"


def recipes() -> list[Recipe]:
    out: list[Recipe] = []
    quanto = needs_package("optimum.quanto", "pip install optimum-quanto")
    for short in ("denoiser", "unet", "vae"):
        for w in QUANTO_WEIGHTS:
            name = f"load-quanto-{short}-{w}w"
            comp = "denoiser" if short in ("denoiser", "unet") else short
            out.append(Recipe(name, f"quantized while loading: from_pretrained with quanto {w} weights for the "
                              f"{short} (PipelineQuantizationConfig quant_mapping)", "loading", "optimum-quanto",
                              slots=(f"quant:{comp}",), check_fn=quanto, load_fn=_quanto(comp, w),
                              fit_fn=needs_unet(name) if short == "unet" else None))
    out.append(Recipe("load-torchao-denoiser-int8wo", "quantized while loading: torchao int8 weight-only "
                      "(TorchAoConfig) for the denoiser", "loading", "torchao", slots=("quant:denoiser",),
                      check_fn=needs_package("torchao", "pip install torchao"), load_fn=_torchao))
    for bits in (8, 4):
        out.append(Recipe(f"load-bnb-denoiser-{bits}bit", f"quantized while loading: bitsandbytes {bits}-bit "
                          "(BitsAndBytesConfig) for the denoiser", "loading", "CUDA, bitsandbytes",
                          slots=("quant:denoiser",), load_fn=_bnb(bits),
                          check_fn=all_of(needs_package("bitsandbytes", "pip install bitsandbytes"),
                                          needs_cuda("bitsandbytes"))))
    for qtype in ("q8_0", "q4_0"):
        out.append(Recipe(f"gguf-denoiser-{qtype}", f"the transformer exported to GGUF {qtype.upper()} (gguf "
                          "package) and loaded with GGUFQuantizationConfig, dequantized per layer", "loading", "gguf",
                          slots=("quant:denoiser",), load_fn=_gguf(qtype),
                          check_fn=needs_package("gguf", "pip install gguf"),
                          fit_fn=needs_denoiser("transformer", _GGUF_FIT)))
    return [replace(r, apply_fn=_loaded_with(r.name)) for r in out]


INCOMPATIBLE: dict[frozenset[str], str] = {}
