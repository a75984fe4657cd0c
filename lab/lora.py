"""LoRA (seed 000 §8.1): load from a local safetensors file with a scale, fuse and unfuse.

The seed calls ``pipe.unet.load_lora_weights``, which does not exist: LoRA loads through the pipeline
(``pipe.load_lora_weights``), is weighted with ``set_adapters`` and can be fused into the weights
(no per-call LoRA cost) and unfused again. ``make_lora`` writes a small random LoRA with peft for
offline tests and demos.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ._checks import LabError
from .denoiser import denoiser, denoiser_name


def make_lora(pipe, path: str | os.PathLike, *, rank: int = 4, seed: int = 0, std: float = 0.05) -> Path:
    """Create a rank-``rank`` LoRA on the denoiser's attention projections and save it as safetensors.

    The denoiser (UNet or transformer) is copied first, so ``pipe`` itself is left untouched.
    """
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    path = Path(path)
    if path.suffix != ".safetensors":
        raise LabError(f"a LoRA file must end in .safetensors, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    name, source = denoiser_name(pipe), denoiser(pipe)
    copy = type(source).from_config(source.config)
    copy.load_state_dict(_base_state(source))
    copy.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param_name, param in copy.named_parameters():
            if "lora_B" in param_name:  # peft starts B at zero (a no-op adapter): give it a visible effect
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(copy))
    # each pipeline class writes its own key prefixes (unet.* for SD, transformer.* for Flux/SD3)
    type(pipe).save_lora_weights(save_directory=path.parent, **{f"{name}_lora_layers": layers},
                                 weight_name=path.name, safe_serialization=True)
    return path


def _base_state(module) -> dict:
    """The denoiser's own weights, without the peft layers of a LoRA it already holds (as the base weights read)."""
    state = module.state_dict()
    if getattr(module, "peft_config", None) is None:
        return state
    if any(getattr(layer, "merged", False) for layer in module.modules()):
        raise LabError("the pipeline holds a fused LoRA; call lab.lora.unfuse(pipe) before make_lora")
    return {k.replace(".base_layer.", "."): v for k, v in state.items() if ".lora_" not in k}


def _check_file(path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    if path.is_dir():
        raise LabError(f"LoRA path {str(path)!r} is a directory, pass the .safetensors file inside it")
    if not path.is_file():
        raise LabError(f"LoRA file {str(path)!r} does not exist")
    import torch

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            # a LoRA of NaN or inf turns every image black: refused here, not found in the next image
            bad = [k for k in keys if (t := f.get_tensor(k)).is_floating_point() and not bool(torch.isfinite(t).all())]
    except (SafetensorError, OSError, ValueError) as err:
        raise LabError(f"LoRA file {str(path)!r} is not a readable safetensors file ({err}); only safetensors "
                       "LoRAs are loaded (never pickled .bin/.ckpt)") from None
    if not keys:
        raise LabError(f"LoRA file {str(path)!r} holds no tensors")
    if bad:
        raise LabError(f"LoRA file {str(path)!r} holds NaN or infinite weights in {len(bad)} of {len(keys)} tensors "
                       f"(first: {bad[0]}); it would turn every image black")


def _lora_modules(pipe) -> dict[str, object]:
    """The components a LoRA can change (UNet, text encoders), by name."""
    import torch

    names = getattr(pipe, "_lora_loadable_modules", None) or (denoiser_name(pipe), "text_encoder", "text_encoder_2")
    return {n: m for n in names if isinstance(m := getattr(pipe, n, None), torch.nn.Module)}


def _adapters(pipe) -> dict[str, frozenset[str] | None]:
    """Per component: the names of its peft adapters, or None where it has no peft layers at all."""
    out = {}
    for name, module in _lora_modules(pipe).items():
        config = getattr(module, "peft_config", None)
        out[name] = frozenset(config) if config is not None else None
    return out


def _adapter_layers(pipe, adapter_name: str) -> int:
    """LoRA layers holding ``adapter_name`` (empty peft wrappers left by another attempt do not count)."""
    return sum(1 for name, _ in denoiser(pipe).named_modules() if name.endswith(f"lora_A.{adapter_name}"))


def _rollback(pipe, before: dict[str, frozenset[str] | None]) -> None:
    """Remove exactly what a failed load added: new adapters, and peft layers where there were none."""
    from diffusers.utils import recurse_remove_peft_layers
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in _lora_modules(pipe).items():
        had = before.get(name)
        config = getattr(module, "peft_config", None)
        if config is None:
            continue
        if had is None:  # the component had no LoRA: strip every peft wrapper the attempt injected
            recurse_remove_peft_layers(module)
            if hasattr(module, "peft_config"):
                del module.peft_config
            if hasattr(module, "_hf_peft_config_loaded"):
                module._hf_peft_config_loaded = None
            continue
        for adapter in set(config) - had:  # keep the adapters that were there before
            for layer in module.modules():
                if isinstance(layer, BaseTunerLayer) and adapter in getattr(layer, "lora_A", {}):
                    layer.delete_adapter(adapter)
            config.pop(adapter, None)


def load_lora(pipe, path: str | os.PathLike, *, scale: float = 1.0, adapter_name: str = "lab"):
    """Load a local safetensors LoRA into ``pipe`` with weight ``scale``; the pipeline is unchanged on error."""
    import logging

    from ._checks import check_text, finite_number

    path = Path(path)
    finite_number("scale", scale)
    check_text("adapter_name", adapter_name)
    _check_file(path)
    before = _adapters(pipe)
    if any(adapter_name in (names or ()) for names in before.values()):
        raise LabError(f"an adapter named {adapter_name!r} is already loaded; pass another adapter_name or "
                       "call pipe.delete_adapters first")
    from ._quiet import quiet_diffusers

    peft_log = logging.getLogger("peft")
    level = peft_log.level
    peft_log.setLevel(logging.ERROR)
    # diffusers logs the whole state-dict mismatch (dozens of lines) before raising: our one-line error says it.
    with quiet_diffusers(logging.CRITICAL):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name)
            if _adapter_layers(pipe, adapter_name) == 0:
                raise LabError(f"LoRA {str(path)!r} matched no layer of this pipeline: it is for another architecture")
            pipe.set_adapters([adapter_name], adapter_weights=[scale])
        except LabError:
            _rollback(pipe, before)
            raise
        except Exception as err:  # any failure: the pipeline must come back exactly as it was
            _rollback(pipe, before)
            lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
            first = next((line for line in lines if "mismatch" in line or "Missing" in line), lines[0])[:300]
            raise LabError(f"LoRA {str(path)!r} does not fit this {type(denoiser(pipe)).__name__} (another "
                           f"architecture?): {first}") from None
        finally:
            peft_log.setLevel(level)
    return pipe


def fuse(pipe, scale: float = 1.0):
    """Merge the active LoRA into the weights: no extra work per call afterwards."""
    pipe.fuse_lora(lora_scale=scale)
    return pipe


def unfuse(pipe):
    """Undo ``fuse``: the base weights come back and the adapter is separate again."""
    pipe.unfuse_lora()
    return pipe
