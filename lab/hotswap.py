"""LoRA hotswap on a compiled denoiser: two adapters swapped in place (``enable_lora_hotswap`` then
``load_lora_weights(..., hotswap=True)``) against a plain reload (unload, load), graphs compiled and time for each."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .results import Record


@dataclass
class Hotswap(Record):
    """Two LoRAs on one compiled denoiser, swapped in place and reloaded plainly (one pipeline each)."""

    model: str
    backend: str  # torch.compile backend
    ranks: tuple[int, int]  # adapter A's, adapter B's
    steps: int
    compile_s: float  # first call after compiling (adapter A), hotswap pipeline
    hotswap_load_s: float  # load_lora_weights(B, hotswap=True)
    hotswap_call_s: float  # the first call after the swap
    hotswap_graphs: int  # graphs dynamo compiled because of the swap (0: no recompile)
    reload_load_s: float  # unload_lora_weights + load_lora_weights(B)
    reload_call_s: float  # the first call after the reload
    reload_graphs: int  # graphs dynamo compiled because of the reload
    warm_call_s: float  # a call with nothing changed, for scale
    swap_effect: float  # max |image(A) - image(B)|: the swap changed the output
    hotswap_vs_reload: float  # max |image after hotswap - image after reload|: the same adapter B either way


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def compare_hotswap(model: str = "tiny", *, ranks: tuple[int, int] = (4, 8), steps: int = 2,
                    backend: str = "inductor", device: str = "cpu",
                    prompt: str = "a red circle on a blue square") -> Hotswap:
    """Swap LoRA A for B on a compiled denoiser with hotswap, and by a plain reload on a second pipeline; count
    dynamo's new graphs (``counters['stats']['unique_graphs']``) and time each first call after the change.

    Adapters of different ranks (the default) are the case hotswap exists for: a plain reload of an adapter with
    the same rank and module set passes dynamo's guards and does not recompile either.
    """
    import torch

    from ._quiet import quiet_diffusers
    from .denoiser import denoiser
    from .env import synchronize
    from .lora import make_lora
    from .models import load_model

    def call(pipe) -> tuple[torch.Tensor, float]:
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            image = pipe(prompt, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(0),
                         output_type="pt").images
        synchronize(device)
        return image, time.perf_counter() - start

    def timed(fn) -> float:
        start = time.perf_counter()
        with quiet_diffusers():
            fn()
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory(prefix="lab-hotswap-") as tmp:
        pipes = [load_model(model, device=device) for _ in range(2)]
        a, b = (make_lora(pipes[0], Path(tmp) / f"{n}.safetensors", rank=r, seed=s)
                for n, r, s in (("a", ranks[0], 1), ("b", ranks[1], 2)))

        def load(pipe, path: Path, **kw) -> None:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="lab", **kw)

        torch._dynamo.reset()
        hot, plain = pipes
        hot.enable_lora_hotswap(target_rank=max(ranks))  # before the first adapter: ranks and scales become tensors
        with quiet_diffusers():
            load(hot, a)
        denoiser(hot).compile(backend=backend)
        image_a, compile_s = call(hot)
        _, warm_s = call(hot)
        before = _graphs()
        hot_load = timed(lambda: load(hot, b, hotswap=True))
        image_hot, hot_call = call(hot)
        hot_graphs = _graphs() - before

        with quiet_diffusers():
            load(plain, a)
        denoiser(plain).compile(backend=backend)
        call(plain)
        before = _graphs()
        reload_load = timed(lambda: (plain.unload_lora_weights(), load(plain, b)))
        image_plain, reload_call = call(plain)
        reload_graphs = _graphs() - before
    return Hotswap(model=model, backend=backend, ranks=tuple(ranks), steps=steps, compile_s=compile_s,
                   hotswap_load_s=hot_load, hotswap_call_s=hot_call, hotswap_graphs=hot_graphs,
                   reload_load_s=reload_load, reload_call_s=reload_call, reload_graphs=reload_graphs,
                   warm_call_s=warm_s, swap_effect=float((image_a - image_hot).abs().max()),
                   hotswap_vs_reload=float((image_hot - image_plain).abs().max()))
