"""diffusion-lab: profile, benchmark, optimize and verify diffusers pipelines.

Importing ``lab`` is cheap: torch and diffusers load only when a function needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> defining module; resolved on first attribute access
_API = {
    "load_pipeline": "prepare",
    "prepare": "prepare",
    "Prepared": "prepare",
    "embedded_models": "models",
    "parameter_counts": "models",
    "weight_bytes": "models",
    "default_size": "models",
    "ModelUnavailableError": "models",
    "benchmark": "benchmarking",
    "BenchmarkResult": "benchmarking",
    "CaseResult": "benchmarking",
    "Case": "cases",
    "load_prompts": "cases",
    "StageTimer": "timing",
    "StageTimes": "timing",
    "Latency": "stats",
    "Environment": "env",
    "LabError": "_checks",
    "set_scheduler": "schedulers",
    "profile": "profiling",
    "ProfileResult": "profiling",
    "flops_report": "flops",
    "FlopsReport": "flops",
    "measure_peak": "flops",
    "ResourceMonitor": "monitor",
    "diagnose": "diagnosis",
    "Diagnosis": "diagnosis",
    "Thresholds": "diagnosis",
    "plots": None,
    "recipes": None,
    "presets": None,
    "flops": None,
    "compare": "experiments",
    "Comparison": "experiments",
    "preset": "presets",
    "recommend": "presets",
    "RecipeEnv": "env",
    "ssim": "quality",
    "evaluate": "quality",
    "QualityThresholds": "quality",
    "report": "reporting",
    "diff_profiles": "profiling",
    "ResultCache": "cache",
    "CacheKey": "cache",
    "AdaptivePolicy": "adaptive",
    "adapt": "adaptive",
    "prompt_complexity": "adaptive",
    "generate_with_fallback": "fallback",
    "hires_fix": "hires",
    "hardware_plan": "hardware",
    "negative_prompt": "cases",
    "with_negative": "cases",
    "search_mixed_precision": "mixed",
    "lora": None,
    "mixed": None,
    "adaptive": None,
    "widgets": None,
    "psnr": "quality",
    "adherence": "quality",
    "AdherenceReport": "quality",
    "shapes": None,
    "training": None,
    "scheduler_names": "schedulers",
}

__all__ = sorted(_API)

if TYPE_CHECKING:
    from ._checks import LabError
    from .benchmarking import BenchmarkResult, CaseResult, benchmark
    from .cases import Case, load_prompts
    from .env import Environment
    from .models import ModelUnavailableError, default_size, embedded_models, parameter_counts, weight_bytes
    from .prepare import Prepared, load_pipeline, prepare
    from .schedulers import scheduler_names, set_scheduler
    from . import adaptive, flops, lora, mixed, plots, presets, recipes, shapes, training, widgets
    from .adaptive import AdaptivePolicy, adapt, prompt_complexity
    from .cache import CacheKey, ResultCache
    from .cases import negative_prompt, with_negative
    from .fallback import generate_with_fallback
    from .hardware import hardware_plan
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
    from .stats import Latency
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
