"""Optimization recipes: small, composable techniques, each checked before it is applied.

A recipe string joins names with ``+`` (``"bf16+sdpa+quanto-unet-int8w"``). ``parse()`` refuses
unknown names (listing close matches) and compositions that cannot work (two settings for one
slot, such as two precisions for the UNet; sequential offload with compile; ...). Recipes are
applied in a fixed order whatever the string order: precision, attention, QKV fusion, layout,
quantization, scheduler, memory, compile.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ._checks import LabError
from .env import RecipeEnv
from .schedulers import SCHEDULERS, set_scheduler

COMPONENTS = {"text": "text_encoder", "unet": "unet", "vae": "vae"}
ORDER = {"precision": 10, "attention": 20, "fusion": 25, "layout": 30, "quantization": 40, "scheduler": 50,
         "steps": 55, "caching": 58, "memory": 60, "compile": 70}


# -- the recipe type ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """One technique: ``check(env)`` says why it cannot apply (None if it can); ``apply(pipe)`` does it."""

    name: str
    description: str
    family: str
    needs: str = ""
    slots: tuple[str, ...] = ()  # what it sets: two recipes setting the same slot conflict
    case_overrides: tuple[tuple[str, Any], ...] = ()  # generation parameters it changes
    apply_fn: Callable[..., Any] | None = field(default=None, repr=False, compare=False)
    check_fn: Callable[[RecipeEnv], str | None] | None = field(default=None, repr=False, compare=False)

    def check(self, env: RecipeEnv) -> str | None:
        return self.check_fn(env) if self.check_fn else None

    def apply(self, pipe, cases: Sequence | None = None):
        """Apply in place and return the pipeline; ``cases`` feed calibration where a recipe needs it."""
        if self.apply_fn is not None:
            self.apply_fn(pipe, cases)
        return pipe


def _needs_cuda(what: str) -> Callable[[RecipeEnv], str | None]:
    return lambda env: None if env.cuda else f"{what} needs a CUDA device (this is {env.device})"


def _needs_package(package: str, hint: str) -> Callable[[RecipeEnv], str | None]:
    return lambda env: None if package in env.packages else f"{package} is not installed ({hint})"


def _all(*checks: Callable[[RecipeEnv], str | None]) -> Callable[[RecipeEnv], str | None]:
    def check(env: RecipeEnv) -> str | None:
        return next((r for r in (c(env) for c in checks) if r), None)

    return check


# -- precision ------------------------------------------------------------------------------------------------
def _cast_inputs(module, args, kwargs):
    """Forward pre-hook: floating-point tensor inputs follow the module's dtype (mixed-precision plans)."""
    import torch

    dtype = next(module.parameters()).dtype

    def cast(x):
        return x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != dtype else x

    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def _entry_modules(pipe, component: str):
    """Modules through which tensors enter a component (``vae.decode`` bypasses ``vae.forward``)."""
    module = getattr(pipe, component)
    if component == "vae":
        return [module.post_quant_conv, module.decoder, module.encoder, module.quant_conv]
    return [module]


def _hook_casts(pipe) -> None:
    """Make every component cast its floating inputs to its own dtype (once per pipeline)."""
    if getattr(pipe, "lab_cast_hooks", False):
        return
    for name in ("text_encoder", "text_encoder_2", "unet", "vae"):
        if getattr(pipe, name, None) is not None:
            for entry in _entry_modules(pipe, name):
                if entry is not None:
                    entry.register_forward_pre_hook(_cast_inputs, with_kwargs=True)
    pipe.lab_cast_hooks = True


def _set_dtype(components: Sequence[str], dtype_name: str):
    def apply(pipe, cases):
        from .env import torch_dtype
        from ._quiet import quiet_diffusers

        dtype = torch_dtype(dtype_name)
        for comp in components:
            for name in [comp] + ([f"{comp}_2"] if comp == "text_encoder" else []):
                module = getattr(pipe, name, None)
                if module is not None:
                    with quiet_diffusers():
                        module.to(dtype)
        if len(components) < len(COMPONENTS):  # a mixed plan: tensors cross between dtypes
            _hook_casts(pipe)

    return apply


def _precision_check(dtype_name: str) -> Callable[[RecipeEnv], str | None]:
    def check(env: RecipeEnv) -> str | None:
        if dtype_name == "fp16" and env.device == "cpu":
            return None  # runs (slowly) on CPU; the comparison shows the cost
        if dtype_name == "bf16" and env.cuda and env.cuda_capability and env.cuda_capability < (8, 0):
            return f"bf16 needs compute capability >= 8.0 (this GPU is {env.cuda_capability})"
        return None

    return check


def _tf32(pipe, cases):
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True  # process-wide: TF32 is a global switch in torch
    torch.backends.cudnn.allow_tf32 = True


# -- attention, fusion, layout --------------------------------------------------------------------------------
def _processor(kind: str):
    def apply(pipe, cases):
        from diffusers.models import attention_processor as ap

        proc = {"sdpa": ap.AttnProcessor2_0, "math": ap.AttnProcessor}[kind]
        for name in ("unet", "vae"):
            module = getattr(pipe, name, None)
            if module is not None and hasattr(module, "set_attn_processor"):
                module.set_attn_processor(proc())

    return apply


def _channels_last(pipe, cases):
    import torch

    for name in ("unet", "vae"):
        getattr(pipe, name).to(memory_format=torch.channels_last)


# -- quantization ----------------------------------------------------------------------------------------------
QUANTO_WEIGHTS = {"int8": "qint8", "int4": "qint4", "fp8": "qfloat8"}
QUANTO_ACTIVATIONS = {"int8": "qint8", "fp8": "qfloat8"}


def _calibration_cases(pipe, cases):
    from .cases import load_prompts

    base = list(cases) if cases else load_prompts("seed002")
    return [c.with_overrides(steps=2) for c in base]


def _quanto(component: str, weights: str, activations: str | None):
    def apply(pipe, cases):
        import optimum.quanto as q
        import torch

        for name in [component] + ([f"{component}_2"] if component == "text_encoder" else []):
            module = getattr(pipe, name, None)
            if module is None:
                continue
            q.quantize(module, weights=getattr(q, QUANTO_WEIGHTS[weights]),
                       activations=getattr(q, QUANTO_ACTIVATIONS[activations]) if activations else None)
        if activations:  # ranges of activations come from running the prompt set (quanto's calibration)
            with q.Calibration(momentum=0.9), torch.no_grad():
                for case in _calibration_cases(pipe, cases):
                    pipe(generator=torch.Generator("cpu").manual_seed(case.seed), **case.pipeline_kwargs())
        for name in [component] + ([f"{component}_2"] if component == "text_encoder" else []):
            module = getattr(pipe, name, None)
            if module is not None:
                q.freeze(module)

    return apply


def _torchao_int8(pipe, cases):
    import torchao.quantization as tq

    config = tq.Int8WeightOnlyConfig() if hasattr(tq, "Int8WeightOnlyConfig") else tq.int8_weight_only()
    tq.quantize_(pipe.unet, config)


def _bnb(bits: int):
    def apply(pipe, cases):
        import bitsandbytes as bnb
        import torch

        device = pipe.unet.device
        for parent in list(pipe.unet.modules()):
            for child_name, child in list(parent.named_children()):
                if not isinstance(child, torch.nn.Linear):
                    continue
                bias = child.bias is not None
                if bits == 8:
                    new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=bias,
                                              has_fp16_weights=False, threshold=6.0)
                    new.weight = bnb.nn.Int8Params(child.weight.data.cpu(), requires_grad=False,
                                                   has_fp16_weights=False)
                else:
                    new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=bias,
                                            compute_dtype=child.weight.dtype, quant_type="nf4")
                    new.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4")
                if bias:
                    new.bias = torch.nn.Parameter(child.bias.data.cpu(), requires_grad=False)
                setattr(parent, child_name, new.to(device))  # moving to CUDA quantizes the weights

    return apply


# -- schedulers, steps, caching -----------------------------------------------------------------------------------------
def _scheduler(name: str):
    return lambda pipe, cases: set_scheduler(pipe, name)


def _cache_prompt_embeds(pipe, cases):
    """Wrap ``encode_prompt`` on the instance with a cache keyed by its arguments (not tensors)."""
    import torch

    original = pipe.encode_prompt
    cache: dict = {}

    def key_of(value):
        if isinstance(value, torch.Tensor):
            raise TypeError  # precomputed embeddings: nothing to cache
        return repr(value)

    def encode_prompt(*args, **kwargs):
        try:
            key = tuple(key_of(a) for a in args) + tuple((k, key_of(v)) for k, v in sorted(kwargs.items()))
        except TypeError:
            return original(*args, **kwargs)
        if key not in cache:
            cache[key] = original(*args, **kwargs)
            pipe.lab_prompt_cache_misses = getattr(pipe, "lab_prompt_cache_misses", 0) + 1
        else:
            pipe.lab_prompt_cache_hits = getattr(pipe, "lab_prompt_cache_hits", 0) + 1
        return cache[key]

    pipe.encode_prompt = encode_prompt


# -- memory, compile ----------------------------------------------------------------------------------------------------
def _call(method: str, component: str | None = None):
    def apply(pipe, cases):
        target = getattr(pipe, component) if component else pipe
        getattr(target, method)()

    return apply


def _compile(component: str, mode: str | None = None, regional: bool = False, freezing: bool = False):
    def apply(pipe, cases):
        module = pipe.unet if component == "unet" else pipe.vae.decoder
        if regional:
            module.compile_repeated_blocks(fullgraph=True)
        elif freezing:
            # weights become constants of the graph, so inductor can prepack them for oneDNN on CPU
            module.compile(options={"freezing": True})
        else:
            module.compile(mode=mode)

    return apply


def _compile_check(env: RecipeEnv) -> str | None:
    import shutil

    if not env.cuda and shutil.which("g++") is None and shutil.which("c++") is None:
        return "torch.compile on CPU needs a C++ compiler (g++), which is not on PATH"
    return None


# -- the catalog ------------------------------------------------------------------------------------------------------------
def _build_catalog() -> dict[str, Recipe]:
    r: list[Recipe] = []
    all_dtype = tuple(f"dtype:{c}" for c in COMPONENTS.values())
    for dt, label in (("fp32", "float32"), ("fp16", "float16"), ("bf16", "bfloat16")):
        r.append(Recipe(dt, f"every component in {label}", "precision", slots=all_dtype,
                        apply_fn=_set_dtype(list(COMPONENTS.values()), dt), check_fn=_precision_check(dt)))
        for short, comp in COMPONENTS.items():
            r.append(Recipe(f"{dt}-{short}", f"{comp} in {label} (other components unchanged)", "precision",
                            slots=(f"dtype:{comp}",), apply_fn=_set_dtype([comp], dt), check_fn=_precision_check(dt)))
    r.append(Recipe("tf32", "TF32 tensor-core matmuls for fp32 work (process-wide switch)", "precision", "CUDA >= sm80",
                    slots=("tf32",), apply_fn=_tf32,
                    check_fn=lambda env: None if env.cuda and env.cuda_capability and env.cuda_capability >= (8, 0)
                    else "TF32 needs an NVIDIA GPU of compute capability >= 8.0"))

    r.append(Recipe("sdpa", "PyTorch scaled_dot_product_attention (diffusers' default)", "attention",
                    slots=("attention",), apply_fn=_processor("sdpa")))
    r.append(Recipe("math-attention", "plain attention: explicit QK^T, softmax and AV matmuls", "attention",
                    slots=("attention",), apply_fn=_processor("math")))
    r.append(Recipe("attention-slicing", "attention computed in slices (less memory, slower with SDPA)", "attention",
                    slots=("attention",), apply_fn=lambda pipe, cases: pipe.enable_attention_slicing("auto")))
    r.append(Recipe("xformers", "xFormers memory-efficient attention", "attention", "CUDA, xformers",
                    slots=("attention",),
                    apply_fn=lambda pipe, cases: pipe.enable_xformers_memory_efficient_attention(),
                    check_fn=_all(_needs_package("xformers", "pip install xformers"), _needs_cuda("xFormers"))))
    r.append(Recipe("fused-qkv", "fused query/key/value projections in UNet and VAE attention", "fusion",
                    slots=("fusion",), apply_fn=lambda pipe, cases: pipe.fuse_qkv_projections()))
    r.append(Recipe("channels-last", "UNet and VAE weights and activations in channels-last layout", "layout",
                    slots=("layout",), apply_fn=_channels_last))

    for mode, suffix in ((None, ""), ("reduce-overhead", "-reduce-overhead"), ("max-autotune", "-max-autotune")):
        r.append(Recipe(f"compile-unet{suffix}", f"torch.compile of the UNet (mode {mode or 'default'})", "compile",
                        "a C++ compiler on CPU", slots=("compile:unet",), apply_fn=_compile("unet", mode),
                        check_fn=_compile_check))
    r.append(Recipe("compile-unet-frozen", "torch.compile of the UNet with its weights frozen into the graph "
                    "(prepacked for oneDNN on CPU; later weight changes are not seen)", "compile",
                    "a C++ compiler on CPU", slots=("compile:unet",), apply_fn=_compile("unet", freezing=True),
                    check_fn=_compile_check))
    r.append(Recipe("compile-unet-regional", "torch.compile of the UNet's repeated transformer blocks only "
                    "(much shorter compile)", "compile", "a C++ compiler on CPU", slots=("compile:unet",),
                    apply_fn=_compile("unet", regional=True), check_fn=_compile_check))
    r.append(Recipe("compile-vae", "torch.compile of the VAE decoder", "compile", "a C++ compiler on CPU",
                    slots=("compile:vae",), apply_fn=_compile("vae"), check_fn=_compile_check))

    quanto_needs = _needs_package("optimum.quanto", "pip install optimum-quanto")
    for short, comp in COMPONENTS.items():
        for w in QUANTO_WEIGHTS:
            for a in (None, *QUANTO_ACTIVATIONS):
                name = f"quanto-{short}-{w}w" + (f"-{a}a" if a else "")
                acts = f", {a} activations calibrated on the prompt set" if a else ""
                r.append(Recipe(name, f"optimum-quanto: {comp} weights {w}{acts}, frozen", "quantization",
                                "optimum-quanto", slots=(f"quant:{comp}",), apply_fn=_quanto(comp, w, a),
                                check_fn=quanto_needs))
    r.append(Recipe("torchao-int8wo", "torchao int8 weight-only quantization of the UNet", "quantization",
                    "torchao", slots=("quant:unet",), apply_fn=_torchao_int8,
                    check_fn=_needs_package("torchao", "pip install torchao")))
    for bits in (8, 4):
        r.append(Recipe(f"bnb-unet-{bits}bit", f"bitsandbytes {bits}-bit UNet linear layers"
                        + (" (NF4)" if bits == 4 else " (LLM.int8)"), "quantization", "CUDA, bitsandbytes",
                        slots=("quant:unet",), apply_fn=_bnb(bits),
                        check_fn=_all(_needs_package("bitsandbytes", "pip install bitsandbytes"),
                                      _needs_cuda("bitsandbytes"))))

    for name in SCHEDULERS:
        r.append(Recipe(name, f"{SCHEDULERS[name][0]} scheduler", "scheduler", slots=("scheduler",),
                        apply_fn=_scheduler(name)))
    r.append(Recipe("cache-prompt-embeds", "reuse text-encoder outputs for prompts seen before", "caching",
                    slots=("caching",), apply_fn=_cache_prompt_embeds))

    offload_reason = "on a CPU-only machine the whole model already lives in CPU memory: nothing to offload"
    r.append(Recipe("model-cpu-offload", "keep components in CPU memory, move each to the GPU while it runs",
                    "memory", "CUDA, accelerate", slots=("offload",), apply_fn=_call("enable_model_cpu_offload"),
                    check_fn=lambda env: None if env.cuda else offload_reason))
    r.append(Recipe("sequential-cpu-offload", "stream weights to the GPU layer by layer (least memory, slowest)",
                    "memory", "CUDA, accelerate", slots=("offload",),
                    apply_fn=_call("enable_sequential_cpu_offload"),
                    check_fn=lambda env: None if env.cuda else offload_reason))
    r.append(Recipe("vae-slicing", "decode a batch one image at a time (helps only for batches > 1)", "memory",
                    slots=("vae-slicing",), apply_fn=_call("enable_slicing", "vae")))
    r.append(Recipe("vae-tiling", "decode in overlapping tiles (helps only above the VAE's tile size)", "memory",
                    slots=("vae-tiling",), apply_fn=_call("enable_tiling", "vae")))
    return {x.name: x for x in r}


# name pairs that cannot be combined, with the reason
INCOMPATIBLE: dict[frozenset[str], str] = {}


def _incompatible(a: str, b: str, why: str) -> None:
    INCOMPATIBLE[frozenset((a, b))] = why


for _c in ("compile-unet", "compile-unet-reduce-overhead", "compile-unet-max-autotune", "compile-unet-frozen",
           "compile-unet-regional", "compile-vae"):
    _incompatible("sequential-cpu-offload", _c, "sequential offload moves weights inside the forward pass, which "
                  "torch.compile cannot trace (seed 002's expert tier combines them: it does not work)")
for _a in ("math-attention", "attention-slicing", "xformers"):
    _incompatible("fused-qkv", _a, "fused QKV installs its own fused SDPA attention processor")

_STEPS = re.compile(r"^steps-(\d+)$")
_GUIDANCE = re.compile(r"^guidance-(\d+(?:\.\d+)?)$")


@lru_cache(maxsize=1)
def _catalog() -> dict[str, Recipe]:
    return _build_catalog()


def get(name: str) -> Recipe:
    """One recipe by name, including the parametric ``steps-<N>`` and ``guidance-<G>``."""
    if name in _catalog():
        return _catalog()[name]
    if m := _STEPS.match(name):
        steps = int(m.group(1))
        if steps < 1:
            raise LabError(f"recipe {name!r}: steps must be >= 1")
        return Recipe(name, f"{steps} denoising steps", "steps", slots=("steps",), case_overrides=(("steps", steps),))
    if m := _GUIDANCE.match(name):
        g = float(m.group(1))
        return Recipe(name, f"guidance scale {g:g}", "steps", slots=("guidance",), case_overrides=(("guidance", g),))
    close = difflib.get_close_matches(name, list(_catalog()) + ["steps-<N>", "guidance-<G>"], n=4, cutoff=0.6)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise LabError(f"unknown recipe {name!r}.{hint} See lab.recipes.catalog() for all {len(_catalog())} names.")


def names() -> list[str]:
    return list(_catalog())


@dataclass(frozen=True)
class Plan:
    """A validated composition of recipes, in application order."""

    text: str
    recipes: tuple[Recipe, ...]

    def check(self, env: RecipeEnv) -> dict[str, str]:
        """Recipes that cannot apply here, with the reason (empty: all can)."""
        return {r.name: why for r in self.recipes if (why := r.check(env))}

    def apply(self, pipe, cases: Sequence | None = None):
        for recipe in self.recipes:
            recipe.apply(pipe, cases)
        return pipe

    def case_overrides(self) -> dict[str, Any]:
        return {k: v for r in self.recipes for k, v in r.case_overrides}


def parse(text: str) -> Plan:
    """Parse ``"a+b+c"`` into a ``Plan``; unknown names and impossible combinations are refused."""
    if not isinstance(text, str) or not text.strip():
        raise LabError(f"a recipe string must be non-empty, e.g. 'bf16+sdpa', got {text!r}")
    parts = [p.strip() for p in text.split("+")]
    if "" in parts:
        raise LabError(f"recipe string {text!r} has an empty part")
    recipes = [get(p) for p in parts]
    dupes = {p for p in parts if parts.count(p) > 1}
    if dupes:
        raise LabError(f"recipe string {text!r} names {sorted(dupes)} twice")
    owner: dict[str, str] = {}
    for rec in recipes:
        for slot in rec.slots:
            if slot in owner:
                raise LabError(f"cannot combine {owner[slot]!r} and {rec.name!r}: both set {slot}")
            owner[slot] = rec.name
    for i, a in enumerate(recipes):
        for b in recipes[i + 1:]:
            if why := INCOMPATIBLE.get(frozenset((a.name, b.name))):
                raise LabError(f"cannot combine {a.name!r} and {b.name!r}: {why}")
    ordered = sorted(recipes, key=lambda rec: ORDER[rec.family])
    return Plan(text=text, recipes=tuple(ordered))


def catalog(env: RecipeEnv | None = None):
    """All recipes as a DataFrame: name, family, description, needs, and (with ``env``) why not here."""
    import pandas as pd

    rows = []
    for rec in _catalog().values():
        row = {"name": rec.name, "family": rec.family, "description": rec.description, "needs": rec.needs}
        if env is not None:
            row["not_applicable"] = rec.check(env) or ""
        rows.append(row)
    rows += [{"name": "steps-<N>", "family": "steps", "description": "N denoising steps", "needs": ""},
             {"name": "guidance-<G>", "family": "steps", "description": "guidance scale G", "needs": ""}]
    return pd.DataFrame(rows).set_index("name")
