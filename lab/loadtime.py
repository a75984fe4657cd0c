"""Load-time quantization: the configs ``from_pretrained`` takes, a GGUF export of a transformer, and peak memory
while loading (each way of loading measured in a fresh process, against quantizing after the load)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ._checks import LabError
from .env import REPO_ROOT

GGUF_TYPES = ("q8_0", "q4_0")  # block quantizations diffusers' GGUF loader dequantizes (block of 32 values)
QUANTO_LOAD_WEIGHTS = {"int8": "int8", "fp8": "float8", "int4": "int4"}  # lab name -> diffusers QuantoConfig


def cache_dir() -> Path:
    """Where generated artefacts (GGUF files) go: ``$LAB_CACHE_DIR`` or ``~/.cache/diffusion-lab``."""
    return Path(os.environ.get("LAB_CACHE_DIR") or Path.home() / ".cache" / "diffusion-lab")


def model_folder(model: str) -> Path | None:
    """The diffusers folder whose weights ``model`` loads from (None: built from configs, nothing on disk)."""
    from .models import EMBEDDED

    if model in EMBEDDED:
        spec = EMBEDDED[model]
        return spec.folder if spec.trained else None
    path = Path(model).expanduser()
    return path if path.is_dir() else None


def load_refusal(model: str) -> str | None:
    """Why load-time quantization cannot apply to ``model`` (None if it can)."""
    if model_folder(model) is not None:
        return None
    from .models import EMBEDDED

    if model in EMBEDDED:
        return (f"load-time quantization reads weights from disk, and {model!r} is built from configs with random "
                "weights; use a trained model (tiny, tiny-flux) or a local diffusers folder")
    return f"load-time quantization here needs a local diffusers folder ({model!r} is not one)"


def denoiser_folder(folder: Path) -> str:
    """``transformer`` or ``unet``: the denoiser subfolder of a diffusers pipeline folder."""
    return "transformer" if (folder / "transformer").is_dir() else "unet"


def export_gguf(folder: str | os.PathLike, qtype: str = "q8_0", out: str | os.PathLike | None = None) -> Path:
    """Quantize the transformer of pipeline ``folder`` into a ``.gguf`` (diffusers key names) with the ``gguf``
    package; tensors whose last dimension is not a multiple of the block size, and 1-D ones, stay float32.

    Returns the file, reused when it is newer than the weights it was made from.
    """
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    if qtype not in GGUF_TYPES:
        raise LabError(f"GGUF type {qtype!r} is not one lab writes; allowed: {', '.join(GGUF_TYPES)}")
    folder = Path(folder)
    source = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    if not source.is_file():
        raise LabError(f"{str(folder)!r} has no transformer/diffusion_pytorch_model.safetensors to export to GGUF")
    out = Path(out) if out else cache_dir() / "gguf" / f"{folder.name}-transformer-{qtype}.gguf"
    if out.is_file() and out.stat().st_mtime >= source.stat().st_mtime:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    kind = getattr(gguf.GGMLQuantizationType, qtype.upper())
    block, _ = gguf.GGML_QUANT_SIZES[kind]
    partial = out.with_suffix(".gguf.partial")
    writer = gguf.GGUFWriter(str(partial), arch="flux")
    for name, array in load_file(source).items():
        array = array.astype(np.float32)
        if array.ndim >= 2 and array.shape[-1] % block == 0:
            writer.add_tensor(name, gguf.quants.quantize(array, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out)  # a killed export never leaves a half-written file under the final name
    return out


def gguf_transformer(folder: Path, qtype: str, compute_dtype):
    """The transformer of ``folder`` loaded from its GGUF export, the way users load a GGUF checkpoint offline:
    ``from_single_file`` with ``GGUFQuantizationConfig`` and the local folder as ``config`` (no hub)."""
    import diffusers
    from diffusers import GGUFQuantizationConfig

    from ._quiet import quiet_diffusers

    cls_name = json.loads((folder / "transformer" / "config.json").read_text())["_class_name"]
    path = export_gguf(folder, qtype)
    with quiet_diffusers():
        return getattr(diffusers, cls_name).from_single_file(
            str(path), quantization_config=GGUFQuantizationConfig(compute_dtype=compute_dtype),
            config=str(folder), subfolder="transformer", local_files_only=True, torch_dtype=compute_dtype)


def pipeline_quantization(quant_mapping: dict[str, Any]):
    """``PipelineQuantizationConfig(quant_mapping=...)``: ``quant_backend="quanto"`` fails with transformers 5.24
    ('signatures ... don't match'), the per-component mapping works."""
    from diffusers import PipelineQuantizationConfig

    return PipelineQuantizationConfig(quant_mapping=quant_mapping)


_PROBE = """
import json, sys, time
from lab.memory import flush, peak_rss_bytes, reset_peak_rss
flush(); reset_peak_rss()
import torch
from lab.models import weight_bytes
from lab.prepare import prepare
before = peak_rss_bytes()
start = time.perf_counter()
p = prepare(sys.argv[1], sys.argv[2], device="cpu")
seconds = time.perf_counter() - start
print(json.dumps({"recipe": sys.argv[2], "load_s": seconds, "peak_rss_mb": peak_rss_bytes() / 2**20,
                  "rss_before_mb": before / 2**20, "weight_bytes": weight_bytes(p.pipe)}))
"""


def loading_memory(model: str, recipes: list[str], timeout: float = 600.0):
    """Peak process memory while loading ``model`` with each recipe, one fresh process each (a peak is
    process-wide): load-time quantization against the quantize-after-load recipes. Returns a DataFrame."""
    import pandas as pd

    rows = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    for recipe in recipes:
        done = subprocess.run([sys.executable, "-c", _PROBE, model, recipe], capture_output=True, text=True,
                              env=env, timeout=timeout)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            rows.append({"recipe": recipe, "error": last[:300]})
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["weight_mb"] = sum(row.pop("weight_bytes").values()) / 2**20
        rows.append(row)
    return pd.DataFrame(rows).set_index("recipe")
