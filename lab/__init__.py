"""diffusion-lab: profile, benchmark, optimize and verify diffusers pipelines.

Importing ``lab`` is cheap: torch and diffusers load only when a function needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The public API, in one place. Core names live at ``lab.*``; each resolves to the module that defines it
# on first access. Leaf features are reached as modules (``lab.ladder.run_ladder``, ``lab.lora.load_lora``).
_CORE = {
    # load and prepare
    "load_pipeline": "prepare", "prepare": "prepare", "Prepared": "prepare", "embedded_models": "models",
    "parameter_counts": "models", "weight_bytes": "models", "default_size": "models",
    "ModelUnavailableError": "models", "LabError": "_checks", "RecipeEnv": "env", "Environment": "env",
    "set_scheduler": "schedulers", "scheduler_names": "schedulers",
    # cases
    "Case": "cases", "load_prompts": "cases", "default_prompts": "cases", "negative_prompt": "cases", "with_negative": "cases",
    # diagnose
    "benchmark": "benchmarking", "BenchmarkResult": "benchmarking", "CaseResult": "benchmarking",
    "StageTimer": "timing", "StageTimes": "timing", "Latency": "stats", "profile": "profiling",
    "ProfileResult": "profiling", "diff_profiles": "profiling", "flops_report": "flops", "FlopsReport": "flops",
    "measure_peak": "flops", "ResourceMonitor": "monitor", "diagnose": "diagnosis", "Diagnosis": "diagnosis",
    "Thresholds": "diagnosis", "HostLoad": "host", "Verdict": "stats",
    # compare and optimize
    "compare": "experiments", "Comparison": "experiments", "preset": "presets", "recommend": "presets",
    "search_mixed_precision": "mixed", "hardware_plan": "hardware",
    "thread_sweep": "threads", "ThreadScaling": "threads", "Energy": "power",
    "batch_sweep": "throughput", "ThroughputResult": "throughput",
    # verify
    "ssim": "quality", "psnr": "quality", "evaluate": "quality", "QualityThresholds": "quality",
    "adherence": "quality", "AdherenceReport": "quality", "report": "reporting",
    # advance
    "ResultCache": "cache", "CacheKey": "cache", "AdaptivePolicy": "adaptive", "adapt": "adaptive",
    "prompt_complexity": "adaptive", "generate_with_fallback": "fallback", "hires_fix": "hires",
}
_MODULES = ("adaptive", "denoiser", "executors", "fidelity", "flops", "gpucheck", "host", "hotswap", "ladder",
            "loadtime", "lora", "mixed", "plots", "power", "presets", "recipes", "runtimes", "shapes", "takeaways",
            "threads", "throughput", "training", "trajectory", "widgets", "workflows")
_API = {**_CORE, **{name: None for name in _MODULES}}

__all__ = sorted(_API)

if TYPE_CHECKING:
    from ._checks import LabError
    from .benchmarking import BenchmarkResult, CaseResult, benchmark
    from .cases import Case, default_prompts, load_prompts
    from .env import Environment
    from .models import ModelUnavailableError, default_size, embedded_models, parameter_counts, weight_bytes
    from .prepare import Prepared, load_pipeline, prepare
    from .schedulers import scheduler_names, set_scheduler
    from . import (adaptive, denoiser, executors, fidelity, flops, gpucheck, host, hotswap, ladder, loadtime, lora,
                   mixed, plots, power, presets, recipes, runtimes, shapes, takeaways, threads, throughput, training,
                   trajectory, widgets, workflows)
    from .adaptive import AdaptivePolicy, adapt, prompt_complexity
    from .cache import CacheKey, ResultCache
    from .cases import negative_prompt, with_negative
    from .fallback import generate_with_fallback
    from .hardware import hardware_plan
    from .power import Energy
    from .threads import ThreadScaling, thread_sweep
    from .throughput import ThroughputResult, batch_sweep
    from .hires import hires_fix
    from .mixed import search_mixed_precision
    from .experiments import Comparison, compare
    from .presets import preset, recommend
    from .profiling import diff_profiles
    from .quality import AdherenceReport, QualityThresholds, adherence, evaluate, psnr, ssim
    from .reporting import report
    from .env import RecipeEnv
    from .diagnosis import Diagnosis, Thresholds, diagnose
    from .flops import FlopsReport, flops_report, measure_peak
    from .monitor import ResourceMonitor
    from .profiling import ProfileResult, profile
    from .host import HostLoad
    from .stats import Latency, Verdict
    from .timing import StageTimer, StageTimes


def __getattr__(name: str):
    if name in _API:
        module = importlib.import_module(f".{_API[name] or name}", __name__)
        value = module if _API[name] is None else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
