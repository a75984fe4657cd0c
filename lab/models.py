"""Load pipelines: embedded offline models built from shipped configs, or ``from_pretrained``."""

from __future__ import annotations

import concurrent.futures
import contextlib
import difflib
import json
import os
import socket
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
    tokenizer: str | None = None  # shared tokenizer folder, relative to data/; None: the model's own
    published_params: tuple[tuple[str, int], ...] = ()  # parameter counts of the real model
    seed: int = 0
    trained: bool = False  # the folder holds trained weights (safetensors), not only configs

    @property
    def folder(self) -> Path:
        return DATA_MODELS / self.name


_CLIP_L = ("text_encoder", 123_060_480)
_SD_VAE = ("vae", 83_653_863)

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
    if name.startswith("tokenizer"):
        source = DATA / spec.tokenizer if spec.tokenizer else folder
        return transformers.CLIPTokenizer.from_pretrained(source, model_max_length=77)
    if name == "scheduler":
        return getattr(diffusers, cls_name).from_config(_read_json(folder / "scheduler_config.json"))
    if library == "transformers":
        cls = getattr(transformers, cls_name)
        return cls(cls.config_class.from_json_file(folder / "config.json"))
    return getattr(diffusers, cls_name).from_config(_read_json(folder / "config.json"))


def build_embedded(name: str, *, empty: bool = False):
    """Build embedded pipeline ``name`` on CPU in fp32: trained weights from ``data/``, or deterministically
    initialised random weights.

    Args:
        empty: build on the meta device (no memory, no init) to inspect shapes and counts.
    """
    import diffusers
    import torch
    from accelerate import init_empty_weights

    spec = EMBEDDED[name]
    if spec.trained and not empty:
        return _load_trained(spec)
    index = _read_json(spec.folder / "model_index.json")
    components: dict[str, Any] = {}
    for i, (comp, (library, cls_name)) in enumerate(_component_specs(spec).items()):
        # One seed per component: adding a component never changes another's weights.
        torch.manual_seed(spec.seed + i)
        with init_empty_weights() if empty else contextlib.nullcontext():
            components[comp] = _build_component(spec, comp, library, cls_name)
    with quiet_transformers():  # importing the pipeline class imports image processors lab never uses
        pipeline_cls = getattr(diffusers, index["_class_name"])
    optional = {k: None for k in _SKIPPED_COMPONENTS if k in pipeline_cls._optional_components}
    if "requires_safety_checker" in index:
        optional["requires_safety_checker"] = False
    return pipeline_cls(**components, **optional)


def _load_trained(spec: EmbeddedModel):
    import diffusers
    import transformers

    if not (spec.folder / "unet" / "diffusion_pytorch_model.safetensors").is_file():
        raise ModelUnavailableError(
            f"the trained weights of {spec.name!r} are missing from {str(spec.folder)!r}; "
            f"restore them from git or retrain with `python -m lab train --out {spec.folder}`"
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
            return diffusers.StableDiffusionPipeline.from_pretrained(spec.folder, local_files_only=True)
    finally:
        transformers.utils.logging.set_verbosity(level)
        for lib, enabled in zip(libs, bars):
            if enabled:
                lib.enable_progress_bar()


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
            out[name] = sum(tensor_bytes(t) for t in tensors)
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


def _from_pretrained(model: str, dtype):
    """A local diffusers folder or a hub id, already vetted by ``check_model``."""
    from diffusers import DiffusionPipeline

    path = Path(model).expanduser()
    if path.is_dir():
        try:
            return DiffusionPipeline.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
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


def load_model(model: str = "tiny", *, dtype: str = "fp32", device: str = "auto", scheduler: str | None = None):
    """Load a diffusers pipeline with no recipe applied (arguments as ``lab.load_pipeline``, which adds recipes)."""
    from .schedulers import SCHEDULERS
    from ._checks import choose

    check_model(model)
    torch_dt = torch_dtype(dtype)
    device = resolve_device(device)
    if scheduler is not None:
        choose("scheduler", scheduler, SCHEDULERS)
        _check_scheduler_fits(model, scheduler)
    if model in EMBEDDED:
        pipe = build_embedded(model)
        _cast(pipe, device, torch_dt)
    else:
        pipe = _from_pretrained(model, torch_dt)
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
    """The pipeline's native square resolution in pixels."""
    from .denoiser import denoiser

    sample = denoiser(pipe).config.get("sample_size") or getattr(pipe, "default_sample_size", None)
    if sample is None:
        raise LabError(f"{type(pipe).__name__} declares no native size; pass the height and width")
    return int(sample * pipe.vae_scale_factor)
