"""Load pipelines: embedded offline models built from shipped configs, or ``from_pretrained``."""

from __future__ import annotations

import concurrent.futures
import contextlib
import difflib
import functools
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ._checks import LabError, read_text_file
from .env import REPO_ROOT, resolve_device, torch_dtype
from ._quiet import quiet_diffusers, quiet_transformers
from .schedulers import set_scheduler

DATA = REPO_ROOT / "data"
DATA_MODELS = DATA / "models"


@dataclass(frozen=True)
class EmbeddedModel:
    """A pipeline built offline from configs in ``data/models/<folder>``."""

    name: str
    description: str
    reference: str  # the hub id whose published component configs are shipped
    tokenizer: str | None = None  # shared CLIP tokenizer folder, relative to data/; None: the model's own
    t5_tokenizer: str | None = None  # shared T5 tokenizer folder, relative to data/; None: the model's own
    published_params: tuple[tuple[str, int], ...] = ()  # parameter counts of the real model
    seed: int = 0
    trained: bool = False  # the folder holds trained weights (safetensors), not only configs
    # Optional components (the pipeline accepts None) left out when the whole model does not fit in memory.
    droppable: tuple[str, ...] = ()

    @property
    def folder(self) -> Path:
        return DATA_MODELS / self.name


_CLIP_L = ("text_encoder", 123_060_480)
_SD_VAE = ("vae", 83_653_863)
_VAE_16 = ("vae", 83_819_683)  # FLUX.1's and SD3's 16-channel autoencoder
_T5_XXL = 4_762_310_656  # google/t5-v1_1-xxl's encoder (token embedding counted once)

EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            "tiny",
            "tiny SD pipeline (64x64) trained on shape scenes (lab.shapes): real pictures offline",
            reference="(none: trained by `python -m lab train`)",
            trained=True,
        ),
        EmbeddedModel(
            "tiny-random",
            "tiny SD pipeline (64x64, random weights), for fast tests",
            reference="(none: lab's own configs)",
        ),
        EmbeddedModel(
            "tiny-sdxl",
            "tiny SDXL pipeline (64x64, random weights, two text encoders), for SDXL code paths",
            reference="(none: lab's own configs)",
            tokenizer="models/tiny-random/tokenizer",
        ),
        EmbeddedModel(
            "sd15-arch",
            "Stable Diffusion 1.5 architecture, random weights",
            reference="runwayml/stable-diffusion-v1-5",
            tokenizer="tokenizers/clip-synthetic-49408",
            published_params=(("unet", 859_520_964), _SD_VAE, _CLIP_L),
        ),
        EmbeddedModel(
            "sd21-arch",
            "Stable Diffusion 2.1 (768-v) architecture, random weights",
            reference="stabilityai/stable-diffusion-2-1",
            tokenizer="tokenizers/clip-synthetic-49408",
            published_params=(("unet", 865_910_724), _SD_VAE, ("text_encoder", 340_387_840)),
        ),
        EmbeddedModel(
            "sdxl-arch",
            "Stable Diffusion XL base 1.0 architecture, random weights",
            reference="stabilityai/stable-diffusion-xl-base-1.0",
            tokenizer="tokenizers/clip-synthetic-49408",
            published_params=(("unet", 2_567_463_684), _SD_VAE, _CLIP_L, ("text_encoder_2", 694_659_840)),
        ),
        EmbeddedModel(
            "tiny-flux",
            "tiny FLUX.1-architecture pipeline (64x64, 2 double + 4 single blocks) trained on shape scenes",
            reference="(none: trained by `python -m lab train --model tiny-flux`)",
            trained=True,
        ),
        EmbeddedModel(
            "flux-arch",
            "FLUX.1-dev architecture (12 B transformer, T5-XXL + CLIP-L, 16-channel VAE), random weights",
            reference="black-forest-labs/FLUX.1-dev",
            tokenizer="tokenizers/clip-synthetic-49408",
            t5_tokenizer="tokenizers/t5-synthetic-32100",
            published_params=(("transformer", 11_901_408_320), _CLIP_L, ("text_encoder_2", _T5_XXL), _VAE_16),
        ),
        EmbeddedModel(
            "sd35m-arch",
            "Stable Diffusion 3.5 Medium architecture (2.2 B MMDiT-X, CLIP-L + CLIP-G + T5-XXL), random weights",
            reference="stabilityai/stable-diffusion-3.5-medium",
            tokenizer="tokenizers/clip-synthetic-49408",
            t5_tokenizer="tokenizers/t5-synthetic-32100",
            # The transformer's 226 M-value sin-cos position table is a buffer, not a parameter: with it
            # the CLIPs, transformer and VAE make KerasHub's published 3 371 793 763 for this model.
            published_params=(("transformer", 2_243_171_520), ("text_encoder", 123_650_304),
                              ("text_encoder_2", 694_659_840), ("text_encoder_3", _T5_XXL), _VAE_16),
            droppable=("text_encoder_3",),
        ),
    )
}

_SKIPPED_COMPONENTS = {"safety_checker", "feature_extractor", "image_encoder"}


class ModelUnavailableError(LabError):
    """The model is neither embedded, nor a local folder, nor reachable on the hub."""


def embedded_models() -> list[str]:
    return list(EMBEDDED)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _component_specs(spec: EmbeddedModel) -> dict[str, tuple[str, str]]:
    index = _read_json(spec.folder / "model_index.json")
    return {
        name: tuple(value)
        for name, value in index.items()
        if not name.startswith("_")
        and isinstance(value, list)
        and value[1] is not None
        and name not in _SKIPPED_COMPONENTS
    }


def _build_component(spec: EmbeddedModel, name: str, library: str, cls_name: str):
    import diffusers
    import transformers

    folder = spec.folder / name
    if cls_name.startswith("T5Tokenizer"):
        # T5's 512 tokens: FluxPipeline asks for up to 512, StableDiffusion3Pipeline for 256 by default.
        source = DATA / spec.t5_tokenizer if spec.t5_tokenizer else folder
        return transformers.T5TokenizerFast.from_pretrained(source, model_max_length=512)
    if name.startswith("tokenizer"):
        source = DATA / spec.tokenizer if spec.tokenizer else folder
        return transformers.CLIPTokenizer.from_pretrained(source, model_max_length=77)
    if name == "scheduler":
        return getattr(diffusers, cls_name).from_config(_read_json(folder / "scheduler_config.json"))
    if library == "transformers":
        import torch

        cls = getattr(transformers, cls_name)
        config = cls.config_class.from_json_file(folder / "config.json")
        config.dtype = torch.float32  # transformers 5 builds in a config's "torch_dtype" (CLIP-G's: float16)
        return cls(config)
    return getattr(diffusers, cls_name).from_config(_read_json(folder / "config.json"))


def _pipeline_class(spec: EmbeddedModel):
    import diffusers

    with quiet_transformers():  # importing the pipeline class imports image processors lab never uses
        return getattr(diffusers, _read_json(spec.folder / "model_index.json")["_class_name"])


def _tokenizer_of(component: str) -> str:
    return component.replace("text_encoder", "tokenizer")


def build_embedded(name: str, *, empty: bool = False, dtype=None, drop: tuple[str, ...] = (),
                   load: dict[str, Any] | None = None):
    """Build embedded pipeline ``name`` on CPU: trained weights from ``data/``, or deterministically
    initialised random weights (built in fp32, each component cast to ``dtype`` before the next is built).

    Args:
        empty: build on the meta device (no memory, no init) to inspect shapes and counts.
        dtype: a torch dtype for the weights; None keeps fp32.
        drop: optional components (``EmbeddedModel.droppable``) to leave out, with their tokenizers.
        load: ``from_pretrained`` options of load-time recipes (trained models only: they load from disk).
    """
    import torch

    spec = EMBEDDED[name]
    unknown = set(drop) - set(spec.droppable)
    if unknown:
        raise LabError(f"{name!r} cannot drop {sorted(unknown)}; droppable: {list(spec.droppable) or 'none'}")
    if load and not spec.trained:
        raise LabError(f"{name!r} is built from configs: load-time options {sorted(load)} need weights on disk")
    if spec.trained and not empty:
        pipe = _load_trained(spec, load or {})
        if dtype is not None and dtype != torch.float32:
            with quiet_diffusers():
                pipe.to(dtype=dtype)
        return pipe
    left_out = set(drop) | {_tokenizer_of(c) for c in drop}
    components: dict[str, Any] = {}
    for i, (comp, (library, cls_name)) in enumerate(_component_specs(spec).items()):
        if comp in left_out:
            components[comp] = None
            continue
        # One seed per component: adding a component never changes another's weights.
        torch.manual_seed(spec.seed + i)
        # torch's meta device, not accelerate's init_empty_weights: that one unties T5's token embeddings
        # (transformers 5), which would count T5-XXL's 132 M embedding twice.
        weights = comp != "scheduler" and not comp.startswith("tokenizer")  # schedulers compute real tensors
        with torch.device("meta") if empty and weights else contextlib.nullcontext():
            module = _build_component(spec, comp, library, cls_name)
        if dtype is not None and dtype != torch.float32 and isinstance(module, torch.nn.Module):
            with quiet_diffusers():  # its "keep in float32" notice: these weights are random
                module.to(dtype=dtype)  # now, so the fp32 copy of only one component exists at a time
        components[comp] = module
    pipeline_cls = _pipeline_class(spec)
    index = _read_json(spec.folder / "model_index.json")
    optional = {k: None for k in _SKIPPED_COMPONENTS if k in pipeline_cls._optional_components}
    if "requires_safety_checker" in index:
        optional["requires_safety_checker"] = False
    return _set_default_size(pipeline_cls(**components, **optional))


def _set_default_size(pipe):
    """FluxPipeline hard-codes a 128-latent-pixel default (1024² at FLUX.1's VAE): make it the model's own."""
    if hasattr(pipe, "default_sample_size") and getattr(pipe, "transformer", None) is not None:
        pipe.default_sample_size = default_size(pipe) // pipe.vae_scale_factor
    return pipe


def _load_trained(spec: EmbeddedModel, load: dict[str, Any]):
    import diffusers
    import transformers

    denoiser = "transformer" if (spec.folder / "transformer").is_dir() else "unet"
    if not (spec.folder / denoiser / "diffusion_pytorch_model.safetensors").is_file():
        raise ModelUnavailableError(
            f"the trained weights of {spec.name!r} are missing from {str(spec.folder)!r}; "
            f"restore them from git or retrain with `python -m lab train --model {spec.name} --out {spec.folder}`"
        )
    # Loading bars and the image-processor notice are noise for a 19 MB local model.
    libs = (diffusers.utils.logging, transformers.utils.logging)
    bars = [lib.is_progress_bar_enabled() for lib in libs]
    level = transformers.utils.logging.get_verbosity()
    for lib in libs:
        lib.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    try:
        with quiet_diffusers():
            return _set_default_size(_pipeline_class(spec).from_pretrained(spec.folder, local_files_only=True,
                                                                           **load))
    finally:
        transformers.utils.logging.set_verbosity(level)
        for lib, enabled in zip(libs, bars):
            if enabled:
                lib.enable_progress_bar()


# Working memory beyond the weights: activations, the interpreter, torch's and oneDNN's buffers. The
# interpreter with torch, diffusers and transformers imported holds about 0.5 GiB before any weight; the
# 10 % covers activations at the default sizes (docs/benchmarks.md has the sd35m-arch measurement).
MARGIN_FRACTION = 0.10
MARGIN_BYTES = 512 * 2**20


@dataclass(frozen=True)
class MemoryNeed:
    """What loading an embedded model would take, counted on the meta device."""

    model: str
    dtype: str
    parameters: int  # parameters and floating-point buffers of the components loaded
    weights: int  # their bytes in ``dtype``
    build_extra: int  # one component at a time is built in fp32 before its cast: the largest one's surplus
    margin: int
    dropped: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.weights + self.build_extra + self.margin


@functools.cache
def _component_elements(name: str) -> tuple[tuple[str, int], ...]:
    """Floating-point elements (parameters and buffers, each once) per component, from a meta-device build."""
    import torch

    spec = EMBEDDED[name]
    if spec.trained:  # fp32 safetensors on disk: 4 bytes an element (none there: the loader says what is missing)
        return tuple((d.name, sum(f.stat().st_size for f in d.glob("*.safetensors")) // 4)
                     for d in sorted(spec.folder.iterdir() if spec.folder.is_dir() else ())
                     if d.is_dir() and any(d.glob("*.safetensors")))
    pipe = build_embedded(name, empty=True)
    out = []
    for comp, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            tensors = {id(t): t for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()}
            out.append((comp, sum(t.numel() for t in tensors.values())))
    return tuple(out)


def memory_need(name: str, dtype: str = "fp32", drop: tuple[str, ...] = ()) -> MemoryNeed:
    """Bytes embedded model ``name`` needs in ``dtype`` (weights, build surplus, margin), without loading it."""
    import torch

    torch_dt = torch_dtype(dtype)
    size = torch.empty((), dtype=torch_dt).element_size()
    elements = {c: n for c, n in _component_elements(name) if c not in drop}
    weights = sum(elements.values()) * size
    extra = 0 if EMBEDDED[name].trained else max(elements.values(), default=0) * max(0, 4 - size)
    return MemoryNeed(name, dtype, sum(elements.values()), weights, extra,
                      int(weights * MARGIN_FRACTION) + MARGIN_BYTES, tuple(drop))


def available_memory(device: str) -> int:
    """Bytes free for new tensors: host memory available (psutil) on CPU, the device's free memory on CUDA."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    import psutil

    return int(psutil.virtual_memory().available)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_fits(name: str, dtype: str = "fp32", device: str = "cpu") -> tuple[str, ...]:
    """Refuse, before anything is allocated, an embedded model too large for the memory free here; return the
    optional components to drop (``EmbeddedModel.droppable``) when only the model without them fits."""
    spec = EMBEDDED[name]
    places = ["cpu"] if device == "cpu" else ["cpu", device]  # built on the host, then moved
    free = {p: available_memory(p) for p in places}

    def fits(need: MemoryNeed) -> bool:
        host = need.weights + need.build_extra + (need.margin if device == "cpu" else 0)
        return host <= free["cpu"] and all(need.weights + need.margin <= free[p] for p in places[1:])

    if fits(memory_need(name, dtype)):
        return ()
    need = memory_need(name, dtype, spec.droppable)
    if spec.droppable and fits(need):
        return spec.droppable
    where = " and ".join(f"{free[p]:,} bytes ({_gib(free[p])}) free on {p}" for p in places)
    without = f" even without {', '.join(spec.droppable)}" if spec.droppable else ""
    raise ModelUnavailableError(
        f"{name!r} in {dtype} does not fit this machine{without}: it needs {need.total:,} bytes "
        f"({_gib(need.total)}: {need.parameters:,} weights × {need.weights // max(need.parameters, 1)} bytes = "
        f"{_gib(need.weights)}, + {_gib(need.build_extra)} while one component is built in fp32, + "
        f"{_gib(need.margin)} working margin) and there are {where}. Use a machine with more memory or a smaller "
        f"dtype; its FLOPs can still be counted on the meta device (lab.models.build_embedded({name!r}, "
        "empty=True))."
    )


def parameter_counts(pipe) -> dict[str, int]:
    """Parameters per ``torch.nn.Module`` component of a pipeline."""
    import torch

    return {
        name: sum(p.numel() for p in module.parameters())
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
    }


def tensor_bytes(t) -> int:
    """Bytes a tensor really stores; quantized (quanto) tensors count their inner data and scales."""
    if hasattr(t, "__tensor_flatten__"):
        inner, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, name)) for name in inner)
    return t.numel() * t.element_size()


def weight_bytes(pipe) -> dict[str, int]:
    """Bytes of parameters and buffers per component, as stored (quantized weights included)."""
    import torch

    out = {}
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            tensors = list(module.parameters()) + list(module.buffers())
            # a component run by another runtime (lab.runtimes) holds its weights outside torch
            out[name] = getattr(module, "lab_weight_bytes", None) or sum(tensor_bytes(t) for t in tensors)
    return out


def _hub_offline() -> bool:
    import huggingface_hub.constants as hc

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return hc.HF_HUB_OFFLINE or flag in {"1", "ON", "YES", "TRUE"}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint answers a TCP connect within ``timeout`` seconds (DNS included)."""
    import huggingface_hub.constants as hc

    url = urlparse(hc.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)

    def connect() -> bool:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True

    # getaddrinfo ignores socket timeouts, so bound the whole probe with a thread.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(connect).result(timeout=timeout)
    except (OSError, concurrent.futures.TimeoutError):
        return False
    finally:
        pool.shutdown(wait=False)


def _unavailable(model: str, why: str) -> ModelUnavailableError:
    close = difflib.get_close_matches(model, EMBEDDED, n=2, cutoff=0.5)
    hint = f" Did you mean the embedded {' or '.join(repr(c) for c in close)}?" if close else ""
    return ModelUnavailableError(
        f"cannot load model {model!r}: {why}.{hint} Use an embedded model "
        f"({', '.join(EMBEDDED)}), or download the pipeline elsewhere (e.g. `hf download "
        f"{model} --local-dir ./models/x`) and pass that local folder as the model."
    )


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or os.sep in model.replace("/", "")


def check_model(model: object) -> str:
    """Refuse, without loading anything, a model that cannot be: an empty name, a missing folder, a folder
    without a readable ``model_index.json``. Hub ids pass (only loading can tell)."""
    if not isinstance(model, str) or not model.strip():
        raise LabError(f"model must be a non-empty string, got {model!r}; embedded models: {', '.join(EMBEDDED)}.")
    if model in EMBEDDED:
        return model
    path = Path(model).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise _unavailable(model, f"folder {str(path)!r} has no model_index.json (not a diffusers pipeline)")
        try:
            info = json.loads(read_text_file(index, "model index"))
        except json.JSONDecodeError as err:
            raise ModelUnavailableError(f"{str(index)!r} is not valid JSON ({err}); "
                                        "a diffusers folder needs a model_index.json object") from None
        if not isinstance(info, dict) or not isinstance(info.get("_class_name"), str):
            raise ModelUnavailableError(f"{str(index)!r} is not a diffusers model index "
                                        "(a JSON object with a '_class_name' string)")
    elif path.exists():
        raise _unavailable(model, f"{str(path)!r} is a file, not a diffusers folder")
    elif _looks_like_path(model):
        raise _unavailable(model, f"no such folder {str(path)!r}")
    return model


def _from_pretrained(model: str, dtype, load: dict[str, Any] | None = None):
    """A local diffusers folder or a hub id, already vetted by ``check_model``."""
    from diffusers import DiffusionPipeline

    path = Path(model).expanduser()
    if path.is_dir():
        try:
            return DiffusionPipeline.from_pretrained(path, torch_dtype=dtype, local_files_only=True, **(load or {}))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise ModelUnavailableError(f"cannot load the diffusers folder {str(path)!r}: {first}") from None
    try:  # already in the local hub cache: no network needed
        return DiffusionPipeline.from_pretrained(model, torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError):
        pass
    if _hub_offline():
        raise _unavailable(model, "it is not in the local cache and HF_HUB_OFFLINE is set")
    if not hub_reachable():
        raise _unavailable(model, "it is not in the local cache and the Hugging Face Hub cannot be reached")
    return DiffusionPipeline.from_pretrained(model, torch_dtype=dtype)


def _check_scheduler_fits(model: str, scheduler: str) -> None:
    from .denoiser import model_kind
    from .schedulers import fits

    kind = model_kind(model)
    if kind is not None and (why := fits(scheduler, kind)):
        raise LabError(f"scheduler {scheduler!r} cannot drive {model!r}: {why}")


def load_model(model: str = "tiny", *, dtype: str = "fp32", device: str = "auto", scheduler: str | None = None,
               load: dict[str, Any] | None = None):
    """Load a diffusers pipeline with no recipe applied (arguments as ``lab.load_pipeline``, which adds recipes);
    ``load``: what load-time recipes pass to ``from_pretrained`` (``Plan.load_options``)."""
    from .schedulers import SCHEDULERS
    from ._checks import choose

    check_model(model)
    torch_dt = torch_dtype(dtype)
    device = resolve_device(device)
    if scheduler is not None:
        choose("scheduler", scheduler, SCHEDULERS)
        _check_scheduler_fits(model, scheduler)
    if model in EMBEDDED:
        drop = check_fits(model, dtype, device)
        if drop:
            print(f"note: {model}: {', '.join(drop)} dropped (the whole model does not fit the memory free "
                  f"here; the pipeline runs without it, as it allows)", file=sys.stderr)
        pipe = build_embedded(model, dtype=torch_dt, drop=drop, load=load)
        pipe.lab_dropped = drop
        _cast(pipe, device, torch_dt)
    else:
        pipe = _from_pretrained(model, torch_dt, load)
        pipe.to(device)
    if scheduler is not None:
        set_scheduler(pipe, scheduler)
    pipe.set_progress_bar_config(disable=True)
    pipe.lab_model = model
    return pipe


def _cast(pipe, device: str, dtype) -> None:
    import torch

    if dtype == torch.float32:
        pipe.to(device)
        return
    with quiet_diffusers():
        pipe.to(device=device, dtype=dtype)


def default_size(pipe) -> int:
    """The pipeline's native square resolution in pixels: the denoiser's ``sample_size`` (latent pixels) times
    the VAE's scale factor (UNets, SD3); Flux transformers have no ``sample_size``, so the VAE's own
    ``sample_size`` (its training resolution: 1024 for FLUX.1, 64 for ``tiny-flux``)."""
    from .denoiser import denoiser

    latent = getattr(denoiser(pipe).config, "sample_size", None)
    if latent:
        return int(latent * pipe.vae_scale_factor)
    return int(pipe.vae.config.sample_size)
