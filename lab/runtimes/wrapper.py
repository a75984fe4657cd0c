"""``RuntimeDenoiser``: the pipeline's UNet, exported on first use and run by another runtime."""

from __future__ import annotations

import gc
import time
from typing import Any

import torch

from .backends import Backend

# UNet inputs the export carries, in order; SDXL's added conditioning comes after the three every UNet takes
ADDED = ("text_embeds", "time_ids")


class _Flat(torch.nn.Module):
    """The UNet with positional tensor inputs and one tensor output: what exporters trace."""

    def __init__(self, unet: torch.nn.Module, added: tuple[str, ...]):
        super().__init__()
        self.unet, self.added = unet, added

    def forward(self, sample, timestep, encoder_hidden_states, *added):
        cond = dict(zip(self.added, added)) or None
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=cond,
                         return_dict=False)[0]


class RuntimeDenoiser(torch.nn.Module):
    """Stands in for ``pipe.unet``: exports it through ``backend`` on the first call of each input shape.

    The torch weights are kept (in fp32) until the first export and then released, so the runtime's own copy is
    the only one in memory; a call with another shape (another batch or size) exports again from a kept copy of
    the weights only when ``keep_weights`` is set, otherwise it is refused with the reason.
    """

    def __init__(self, unet: torch.nn.Module, backend: Backend, keep_weights: bool = False):
        super().__init__()
        self.config = unet.config
        self.backend, self.keep_weights = backend, keep_weights
        self._dtype = unet.dtype  # the dtype the pipeline feeds and expects back (bf16 in a bf16 pipeline)
        self.lab_weight_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
        from .._quiet import quiet_diffusers

        with quiet_diffusers():
            self._unet: torch.nn.Module | None = unet.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        self._unet.eval()
        self._runs: dict[tuple, Any] = {}
        self.export_s: list[float] = []  # seconds of each export + compilation (the first call's extra cost)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            # what pipelines read off the UNet besides its config (encoder_hid_proj, add_embedding, ...)
            unet = self.__dict__.get("_modules", {}).get("_unet")
            if unet is not None and hasattr(unet, name):
                return getattr(unet, name)
            raise

    def forward(self, sample, timestep, encoder_hidden_states=None, timestep_cond=None, cross_attention_kwargs=None,
                added_cond_kwargs=None, return_dict: bool = True, **extra):
        if timestep_cond is not None or cross_attention_kwargs or extra:
            raise NotImplementedError(f"{self.backend.name} denoiser: only sample, timestep, text states and SDXL's "
                                      "added conditioning are exported (got timestep_cond, cross-attention kwargs "
                                      "or other inputs)")
        added = tuple(k for k in ADDED if added_cond_kwargs and k in added_cond_kwargs)
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(()) if torch.as_tensor(timestep).numel() == 1 \
            else torch.as_tensor(timestep, dtype=torch.float32)
        inputs = (sample.float(), t, encoder_hidden_states.float(), *(added_cond_kwargs[k].float() for k in added))
        key = (added, *(tuple(x.shape) for x in inputs))
        if key not in self._runs:
            self._runs[key] = self._export(inputs, added)
        out = torch.from_numpy(self._runs[key]([x.contiguous().numpy() for x in inputs])).to(sample.dtype)
        return (out,) if not return_dict else _Output(out)

    def _export(self, inputs: tuple, added: tuple[str, ...]):
        if self._unet is None:
            raise RuntimeError(f"{self.backend.name} denoiser was exported for {list(self._runs)[0][1:]} and its "
                               "torch weights released; a call with other shapes needs keep_weights=True")
        start = time.perf_counter()
        with torch.no_grad():
            run = self.backend.build(_Flat(self._unet, added).eval(), inputs, self._release)
        self.export_s.append(time.perf_counter() - start)
        return run

    def _release(self) -> None:
        if not self.keep_weights and self._unet is not None:
            del self._modules["_unet"]
            self.__dict__["_unet"] = None
            gc.collect()


class _Output(dict):
    """``UNet2DConditionOutput``-like: ``.sample`` and ``[0]``."""

    def __init__(self, sample):
        super().__init__(sample=sample)
        self.sample = sample

    def __getitem__(self, key):
        return self.sample if key == 0 else super().__getitem__(key)


def install(pipe, backend: Backend, keep_weights: bool = False) -> RuntimeDenoiser:
    """Replace ``pipe``'s UNet with a ``RuntimeDenoiser`` on ``backend``; returns it."""
    from ..denoiser import denoiser_name

    name = denoiser_name(pipe)
    wrapper = RuntimeDenoiser(getattr(pipe, name), backend, keep_weights=keep_weights)
    setattr(pipe, name, wrapper)
    return wrapper
