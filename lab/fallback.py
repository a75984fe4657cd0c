"""Out-of-memory fallback (seed 000's "auto degradation"): degrade step by step instead of failing.

On an out-of-memory error the call is retried with VAE tiling, then attention slicing, then at a
lower resolution (three quarters each time, down to ``min_size``); every action is recorded.

``memory_budget_mb`` makes the out-of-memory real on any device: on CUDA the caching allocator is
capped at what is allocated before the call plus the budget (``torch.cuda.set_per_process_memory_fraction``)
and raises its own ``OutOfMemoryError``; elsewhere
a ``MemoryBudget`` dispatch mode counts the bytes of every tensor the call creates and still holds
(freed when the tensor dies) and raises ``torch.OutOfMemoryError`` at the op whose output would take
the live total over the budget, as an allocator with that much memory would. Weights loaded before
the call are not counted: the budget is for the call's working set. Bytes are counted once per storage
and released when the tensor that brought it in dies (a view that outlives it is not counted again), so
the figure is the working set of the tensors torch creates, not the process RSS.
"""

from __future__ import annotations

import contextlib
import gc
import weakref
from dataclasses import dataclass, field

from .cases import Case
from .results import Record

MB = 2**20


def is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def _budget_mode():
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class MemoryBudget(TorchDispatchMode):
        """Counts live tensor bytes created inside it; over ``budget_bytes`` it raises OutOfMemoryError."""

        def __init__(self, budget_bytes: int | None = None):
            super().__init__()
            self.budget_bytes, self.live, self.peak = budget_bytes, 0, 0
            self._owners: dict[int, int] = {}  # storage pointer -> bytes, counted once however many views

        def _release(self, ptr: int) -> None:
            self.live -= self._owners.pop(ptr, 0)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            import torch

            out = func(*args, **(kwargs or {}))
            # a view or an in-place op returns an input's storage: no new memory (weights included)
            inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                      if isinstance(t, torch.Tensor) and t.device.type != "meta"}
            for t in tree_leaves(out):
                if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                    continue
                storage = t.untyped_storage()
                ptr, nbytes = storage.data_ptr(), storage.nbytes()
                if ptr in self._owners or ptr in inputs or nbytes == 0:
                    continue
                if self.budget_bytes is not None and self.live + nbytes > self.budget_bytes:
                    raise torch.OutOfMemoryError(
                        f"out of memory: tried to allocate {nbytes / MB:.2f} MiB in {func} with "
                        f"{self.live / MB:.2f} MiB of {self.budget_bytes / MB:.2f} MiB budget in use (lab memory budget)")
                self._owners[ptr] = nbytes
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._release, ptr)
            return out

    return MemoryBudget


def memory_budget(budget_mb: float | None = None):
    """A ``MemoryBudget`` context: tensors created inside count against ``budget_mb`` (None: only measure);
    ``.peak`` holds the largest live total in bytes afterwards."""
    return _budget_mode()(None if budget_mb is None else int(budget_mb * MB))


def measure_working_set_mb(pipe, case: Case) -> float:
    """Peak MB of tensors one call of ``case`` holds at once (weights excluded), measured under ``memory_budget``."""
    import torch

    with memory_budget() as mode:
        pipe(generator=torch.Generator("cpu").manual_seed(case.seed), **case.pipeline_kwargs())
    return mode.peak / MB


@dataclass
class FallbackResult(Record):
    case: Case  # what finally ran
    actions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    budget_mb: float | None = None
    peak_mb: list[float] = field(default_factory=list)  # working set of each attempt (budgeted runs on CPU)
    call_kwargs: dict = field(default_factory=dict)  # what else the last call was given (a shorter text sequence)


def _call(pipe, case: Case, budget_mb: float | None, result: FallbackResult, cuda: bool):
    import torch

    mode = None if budget_mb is None or cuda else memory_budget(budget_mb)  # CUDA: the allocator's cap is set
    try:
        with contextlib.nullcontext() if mode is None else mode:
            return pipe(generator=torch.Generator("cpu").manual_seed(case.seed), **case.pipeline_kwargs(),
                        **result.call_kwargs)
    finally:
        if mode is not None:
            result.peak_mb.append(round(mode.peak / MB, 3))


def _text_tokens(pipe) -> int | None:
    """The T5 sequence length a transformer pipeline pads prompts to (FLUX.1: 512, SD3: 256), None for a UNet one."""
    import inspect

    parameter = inspect.signature(pipe.__call__).parameters.get("max_sequence_length")
    return parameter.default if parameter is not None and isinstance(parameter.default, int) else None


def generate_with_fallback(pipe, case: Case, *, min_size: int = 256, memory_budget_mb: float | None = None):
    """Generate ``case``; on OOM degrade and retry. Returns (image, FallbackResult); re-raises at the end.

    UNet pipelines: VAE tiling, attention slicing, then lower resolutions. Transformer pipelines (Flux, SD3):
    VAE tiling, then a shorter T5 sequence (every block attends over text and image tokens, and FluxPipeline pads
    prompts to 512 tokens), then lower resolutions; diffusers cannot slice a transformer's attention.

    Args:
        memory_budget_mb: cap the call's memory at this many MB so an out-of-memory really happens
            (CUDA: the allocator's cap; elsewhere: live tensor bytes, see the module docstring).
    """
    import torch

    from .denoiser import denoiser_name
    from .models import default_size

    result = FallbackResult(case=case, budget_mb=memory_budget_mb)
    steps = [("vae-tiling", lambda: pipe.vae.enable_tiling())]
    tokens = _text_tokens(pipe) if denoiser_name(pipe) == "transformer" else None
    if tokens is None:
        steps.append(("attention-slicing", lambda: pipe.enable_attention_slicing("auto")))
    else:
        for _ in range(2):  # 512 -> 256 -> 128 on Flux: prompts longer than that are cut
            tokens //= 2
            steps.append((f"text tokens -> {tokens}", lambda n=tokens: result.call_kwargs.update(max_sequence_length=n)))
    cuda = str(pipe.device).startswith("cuda")
    if memory_budget_mb is not None and cuda:
        # the cap is what is allocated now (weights) plus the call's budget, as on CPU
        index = torch.device(pipe.device).index or 0
        total = torch.cuda.get_device_properties(index).total_memory
        cap = torch.cuda.memory_allocated(index) + memory_budget_mb * MB
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), index)
    current = case
    try:
        while True:
            try:
                out = _call(pipe, current, memory_budget_mb, result, cuda)
                result.case = current
                return out.images[0], result
            except Exception as err:
                if not is_oom(err):
                    raise
                result.errors.append(f"{type(err).__name__}: {str(err)[:200]}")
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
                if steps:
                    name, action = steps.pop(0)
                    action()
                    result.actions.append(name)
                    continue
                size = current.height or default_size(pipe)
                smaller = max(min_size, int(size * 0.75) // 8 * 8)
                if smaller >= size:
                    raise
                current = current.with_overrides(height=smaller, width=smaller)
                result.actions.append(f"resolution {size} -> {smaller}")
    finally:
        if memory_budget_mb is not None and cuda:
            torch.cuda.set_per_process_memory_fraction(1.0, index)
