"""Environment fingerprint, device resolution and dtype names."""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from ._checks import LabError, choose
from .results import Record

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
DEVICES = ("auto", "cpu", "cuda", "mps")
PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "optimum-quanto")
REPO_ROOT = Path(__file__).resolve().parents[1]


def torch_dtype(name: str):
    """Map a dtype name (fp32 / fp16 / bf16) to a ``torch.dtype``."""
    import torch

    return getattr(torch, DTYPES[choose("dtype", name, DTYPES)])


def dtype_name(dtype) -> str:
    """The lab name (fp32 / fp16 / bf16) of a ``torch.dtype``; other dtypes keep torch's name."""
    name = str(dtype).removeprefix("torch.")
    return next((k for k, v in DTYPES.items() if v == name), name)


def resolve_device(name: str = "auto") -> str:
    """Turn ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` / ``mps`` into an available device string."""
    import torch

    base = name.split(":", 1)[0] if isinstance(name, str) else name
    choose("device", base, DEVICES)
    if isinstance(name, str) and ":" in name and (base != "cuda" or not name.split(":", 1)[1].isdigit()):
        raise LabError(f"device {name!r}: only cuda takes an index (cuda:N with N a number); allowed: "
                       f"{', '.join(DEVICES)} or cuda:N.")
    if base == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if base == "cuda" and not torch.cuda.is_available():
        raise LabError(f"device {name!r} requested but CUDA is not available here; use 'cpu' or 'auto'.")
    if base == "mps" and not torch.backends.mps.is_available():
        raise LabError(f"device {name!r} requested but MPS is not available here; use 'cpu' or 'auto'.")
    return name


def synchronize(device: str) -> None:
    """Wait for queued device work so a clock read afterwards is honest."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    elif device.startswith("mps"):
        torch.mps.synchronize()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def cpu_flags() -> tuple[str, ...]:
    """The CPU feature flags that matter for low-precision kernels (AVX-512, AMX, ...)."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return tuple(f for f in wanted if f in present)
    except OSError:
        pass
    return ()


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


@dataclass
class Environment(Record):
    """Everything beside a number that is needed to reproduce or compare it."""

    python: str
    platform: str
    packages: dict[str, str | None]
    device: str
    device_name: str
    cpu_model: str
    cpu_count: int | None
    cpu_flags: list[str]
    torch_threads: int
    git_commit: str | None
    cuda_version: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def capture(cls, device: str = "cpu") -> "Environment":
        import torch

        if device.startswith("cuda"):
            device_name = torch.cuda.get_device_name(torch.device(device))
        else:
            device_name = cpu_model() if device == "cpu" else device
        return cls(
            python=platform.python_version(),
            platform=platform.platform(),
            packages={p: _version(p) for p in PACKAGES},
            device=device,
            device_name=device_name,
            cpu_model=cpu_model(),
            cpu_count=os.cpu_count(),
            cpu_flags=list(cpu_flags()),
            torch_threads=torch.get_num_threads(),
            git_commit=git_commit(),
            cuda_version=torch.version.cuda,
        )


@dataclass(frozen=True)
class RecipeEnv:
    """What recipes check against: the device, CUDA capability and memory, optional packages, CPU flags."""

    device: str
    cuda_capability: tuple[int, int] | None = None
    cuda_memory_gb: float | None = None
    packages: frozenset[str] = frozenset()
    cpu_flags: tuple[str, ...] = ()

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def cpu_bf16(self) -> bool:
        """The CPU has native bf16 matmul (AMX or AVX-512 BF16)."""
        return any(f in self.cpu_flags for f in ("amx_bf16", "avx512_bf16"))

    @classmethod
    def detect(cls, device: str = "auto") -> "RecipeEnv":
        import torch

        device = resolve_device(device)
        cap = mem = None
        if device.startswith("cuda"):
            cap = torch.cuda.get_device_capability(torch.device(device))
            mem = torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30
        optional = ("xformers", "torchao", "bitsandbytes", "optimum.quanto", "flash_attn", "flash_attn_3",
                    "sageattention", "kernels", "gguf", "openvino", "onnxruntime", "onnx", "DeepCache")
        found = frozenset(p for p in optional if importlib.util.find_spec(p.split(".")[0]) is not None)
        return cls(device=device, cuda_capability=cap, cuda_memory_gb=mem, packages=found, cpu_flags=cpu_flags())
