"""Layout recipes: channels-last memory format for the convolutional components."""

from __future__ import annotations

from .base import Recipe


def _channels_last(pipe, cases):
    import torch

    for name in ("unet", "vae"):  # a transformer denoiser has no convolutions worth a layout
        module = getattr(pipe, name, None)
        if module is not None:
            module.to(memory_format=torch.channels_last)


def recipes() -> list[Recipe]:
    return [Recipe("channels-last", "convolution weights and activations in channels-last layout: the UNet and "
                   "the VAE (a transformer denoiser's linear layers are unaffected)", "layout",
                   slots=("layout",), apply_fn=_channels_last)]


INCOMPATIBLE: dict[frozenset[str], str] = {}
