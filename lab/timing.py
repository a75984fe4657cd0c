"""Attribute a pipeline call's wall time to stages, via hooks and the step callback.

Stages: ``text_encoder`` (every text-encoder forward: both encoders of SDXL, all three of SD3),
``denoiser_step_{i}`` (from the first denoiser forward of step 0, or the end of step i-1, to the end of
scheduler step i, as reported by ``callback_on_step_end``; the denoiser is the UNet or the transformer,
``lab.denoiser``), ``vae_decode`` (``vae.decode``) and
``other`` (the rest of the measured total). Diffusers' source is never patched: forward hooks on
the modules, the public step callback, and an instance-level wrapper of ``vae.decode`` that is
removed on exit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._checks import LabError
from .denoiser import STEP_PREFIX, denoiser, step_stage, text_encoder_names
from .env import synchronize
from .results import Record


@dataclass
class StageTimes(Record):
    """Seconds spent per stage in one pipeline call; ``other`` is the unattributed rest."""

    total: float
    text_encoder: float
    denoiser_steps: list[float]
    vae_decode: float
    other: float

    renamed = {"unet_steps": "denoiser_steps"}

    @property
    def denoiser(self) -> float:
        return sum(self.denoiser_steps)

    def as_dict(self) -> dict[str, float]:
        """Flat ``stage -> seconds``, one entry per denoising step."""
        steps = {step_stage(i): s for i, s in enumerate(self.denoiser_steps)}
        return {"text_encoder": self.text_encoder, **steps, "vae_decode": self.vae_decode, "other": self.other}


@dataclass
class StageTimer:
    """Context manager installing the stage hooks on ``pipe``; one ``measure`` per call.

    Args:
        ranges: also open ``torch.profiler.record_function`` ranges named ``lab:<stage>``.
        device: device whose queue is synchronised before every clock read.
        listener: called as ``listener("begin" | "end", stage)`` at every stage boundary (after
            a stage's range closes, before the next opens): FLOP counters and profilers hook in here.
        sync: synchronise the device at every stage boundary (honest per-stage wall times on a GPU). The
            profiler turns it off: the trace has the device's own timing, and a sync per boundary would both
            idle the GPU and show up as synchronisations the pipeline never makes.
    """

    pipe: Any
    device: str = "cpu"
    ranges: bool = False
    listener: Callable[[str, str], None] | None = None
    sync: bool = True
    _handles: list = field(default_factory=list, repr=False)
    _open: dict = field(default_factory=dict, repr=False)
    _acc: dict = field(default_factory=dict, repr=False)
    _steps: list = field(default_factory=list, repr=False)
    _vae_patched: bool = field(default=False, repr=False)

    # -- stage bookkeeping -------------------------------------------------------------------
    def _begin(self, stage: str) -> None:
        if self.sync:
            synchronize(self.device)
        if self.listener is not None:
            self.listener("begin", stage)
        rf = None
        if self.ranges:
            import torch

            rf = torch.profiler.record_function(f"lab:{stage}")
            rf.__enter__()
        self._open[stage] = (time.perf_counter(), rf)

    def _end(self, stage: str) -> float:
        if self.sync:
            synchronize(self.device)
        start, rf = self._open.pop(stage)
        elapsed = time.perf_counter() - start
        if rf is not None:
            rf.__exit__(None, None, None)
        if self.listener is not None:
            self.listener("end", stage)
        return elapsed

    # -- hooks ---------------------------------------------------------------------------------
    def _text_pre(self, module, args, kwargs=None):
        self._begin("text_encoder")

    def _text_post(self, module, args, output):
        self._acc["text_encoder"] = self._acc.get("text_encoder", 0.0) + self._end("text_encoder")

    def _denoiser_pre(self, module, args, kwargs=None):
        if not any(s.startswith(STEP_PREFIX) for s in self._open):
            self._begin(step_stage(len(self._steps)))

    def on_step_end(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        """``callback_on_step_end`` for the pipeline call: closes step ``step``, opens the next."""
        stage = step_stage(len(self._steps))
        if stage in self._open:
            self._steps.append(self._end(stage))
        if step + 1 < getattr(pipe, "num_timesteps", 0):
            self._begin(step_stage(len(self._steps)))
        return callback_kwargs

    def _wrap_vae_decode(self) -> None:
        vae = self.pipe.vae
        original = vae.decode

        def decode(*args, **kwargs):
            self._begin("vae_decode")
            try:
                return original(*args, **kwargs)
            finally:
                self._acc["vae_decode"] = self._acc.get("vae_decode", 0.0) + self._end("vae_decode")

        vae.decode = decode
        self._vae_patched = True

    # -- context -----------------------------------------------------------------------------
    def __enter__(self) -> "StageTimer":
        import inspect

        if "callback_on_step_end" not in inspect.signature(self.pipe.__call__).parameters:
            raise LabError(
                f"stage timing needs a pipeline whose __call__ takes callback_on_step_end; "
                f"{type(self.pipe).__name__} does not."
            )
        for name in text_encoder_names(self.pipe):
            module = getattr(self.pipe, name)
            # pre-hooks go first and post-hooks last, so other hooks are timed inside the stage
            self._handles.append(module.register_forward_pre_hook(self._text_pre, prepend=True))
            self._handles.append(module.register_forward_hook(self._text_post))
        self._handles.append(denoiser(self.pipe).register_forward_pre_hook(self._denoiser_pre, prepend=True))
        if getattr(self.pipe, "vae", None) is not None:
            self._wrap_vae_decode()
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._vae_patched:
            del self.pipe.vae.decode  # drop the instance attribute: the class method shows again
            self._vae_patched = False
        self._close_open()

    def _close_open(self) -> None:
        for stage in list(self._open):
            elapsed = self._end(stage)
            if stage.startswith(STEP_PREFIX):
                self._steps.append(elapsed)

    def measure(self, call: Callable[..., Any], **kwargs) -> tuple[Any, StageTimes]:
        """Run ``call(**kwargs, callback_on_step_end=...)`` and return its output and stage times."""
        user_callback = kwargs.pop("callback_on_step_end", None)

        def callback(pipe, step, timestep, callback_kwargs):
            out = self.on_step_end(pipe, step, timestep, callback_kwargs)
            return user_callback(pipe, step, timestep, out) if user_callback else out

        self._acc, self._steps, self._open = {}, [], {}
        synchronize(self.device)
        start = time.perf_counter()
        try:
            output = call(**kwargs, callback_on_step_end=callback)
        finally:
            self._close_open()  # a call that raises must not leave profiler ranges open
        synchronize(self.device)
        total = time.perf_counter() - start
        text, vae = self._acc.get("text_encoder", 0.0), self._acc.get("vae_decode", 0.0)
        times = StageTimes(
            total=total,
            text_encoder=text,
            denoiser_steps=list(self._steps),
            vae_decode=vae,
            other=total - text - sum(self._steps) - vae,
        )
        return output, times
