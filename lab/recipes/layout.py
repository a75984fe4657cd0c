"""Layout recipes: channels-last memory format for the convolutional components."""

from __future__ import annotations

from .base import Recipe


def _channels_last(pipe, cases):
    import torch

    for name in ("unet", "vae"):
        getattr(pipe, name).to(memory_format=torch.channels_last)


def recipes() -> list[Recipe]:
    return [Recipe("channels-last", "UNet and VAE weights and activations in channels-last layout", "layout",
                   slots=("layout",), apply_fn=_channels_last)]


INCOMPATIBLE: dict[frozenset[str], str] = {}
