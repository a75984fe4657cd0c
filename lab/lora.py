"""LoRA (seed 000 §8.1): load from a local safetensors file with a scale, fuse and unfuse.

The seed calls ``pipe.unet.load_lora_weights``, which does not exist: LoRA loads through the pipeline
(``pipe.load_lora_weights``), is weighted with ``set_adapters`` and can be fused into the weights
(no per-call LoRA cost) and unfused again. ``make_lora`` writes a small random LoRA with peft for
offline tests and demos.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._checks import LabError


def make_lora(pipe, path: str | os.PathLike, *, rank: int = 4, seed: int = 0, std: float = 0.05) -> Path:
    """Create a rank-``rank`` LoRA on the UNet's attention projections and save it as safetensors.

    The UNet is copied first, so ``pipe`` itself is left untouched.
    """
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    path = Path(path)
    if path.suffix != ".safetensors":
        raise LabError(f"a LoRA file must end in .safetensors, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    unet = type(pipe.unet).from_config(pipe.unet.config)
    unet.load_state_dict(pipe.unet.state_dict())
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:  # peft starts B at zero (a no-op adapter): give it a visible effect
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(save_directory=path.parent, unet_lora_layers=layers,
                                              weight_name=path.name, safe_serialization=True)
    return path


def _check_file(path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise LabError(f"LoRA file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError, ValueError) as err:
        raise LabError(f"LoRA file {str(path)!r} is not a readable safetensors file ({err}); only safetensors "
                       "LoRAs are loaded (never pickled .bin/.ckpt)") from None
    if not keys:
        raise LabError(f"LoRA file {str(path)!r} holds no tensors")


def _lora_layers(pipe) -> int:
    return sum(1 for name, _ in pipe.unet.named_modules() if name.endswith("lora_A"))


def load_lora(pipe, path: str | os.PathLike, *, scale: float = 1.0, adapter_name: str = "lab"):
    """Load a local safetensors LoRA into ``pipe`` with weight ``scale``; the pipeline is unchanged on error."""
    path = Path(path)
    _check_file(path)
    before = _lora_layers(pipe)
    try:
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name)
    except (RuntimeError, ValueError, KeyError) as err:
        _remove(pipe, adapter_name)
        raise LabError(f"LoRA {str(path)!r} does not fit this {type(pipe.unet).__name__} (another architecture?): "
                       f"{str(err).splitlines()[0][:300]}") from None
    if _lora_layers(pipe) == before:
        _remove(pipe, adapter_name)
        raise LabError(f"LoRA {str(path)!r} matched no layer of this pipeline: it is for another architecture")
    pipe.set_adapters([adapter_name], adapter_weights=[scale])
    return pipe


def _remove(pipe, adapter_name: str) -> None:
    try:
        pipe.delete_adapters(adapter_name)
    except (ValueError, KeyError, AttributeError):
        pass


def fuse(pipe, scale: float = 1.0):
    """Merge the active LoRA into the weights: no extra work per call afterwards."""
    pipe.fuse_lora(lora_scale=scale)
    return pipe


def unfuse(pipe):
    """Undo ``fuse``: the base weights come back and the adapter is separate again."""
    pipe.unfuse_lora()
    return pipe
