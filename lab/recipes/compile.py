"""Compile recipes: torch.compile of the UNet (modes, frozen weights, repeated blocks only) and the VAE decoder.

On CUDA the mode that pays is ``reduce-overhead`` (CUDA graphs): an eager fp16 UNet step at 512² is
launch-bound on an H100 (41 ms, the host CPU at 100 %), and CUDA graphs replay the whole step at once
(9.2 ms, first call 70-90 s). ``max-autotune`` had not finished tuning after 4 minutes there: opt-in only.
"""

from __future__ import annotations

from ..env import RecipeEnv
from .base import Recipe

UNET_COMPILES = ("compile-unet", "compile-unet-reduce-overhead", "compile-unet-max-autotune", "compile-unet-frozen",
                 "compile-unet-regional", "compile-unet-tuned")
# diffusers' torch.compile guide sets these for the SD UNet: 1x1 convolutions as matmuls, coordinate-descent
# tuning of the generated Triton kernels, no epilogue fusion (it blocks the convolution templates).
TUNED_INDUCTOR = {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True, "epilogue_fusion": False,
                  "coordinate_descent_check_all_directions": True}
# First-call cost measured on an H100 (sd15-arch 512², sdxl-arch 1024²; docs/benchmarks.md "GPU evidence").
COMPILE_COST = {
    "compile-unet": "first call ~1 min on an H100 (sd15-arch)",
    "compile-unet-reduce-overhead": "first call 70-90 s (sd15-arch) / 118 s (sdxl-arch) on an H100",
    "compile-unet-max-autotune": "autotuning had not finished after 4 min on an H100 (sd15-arch): opt-in only",
}


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


def _compile_tuned(pipe, cases):
    import torch._inductor.config as inductor

    for key, value in TUNED_INDUCTOR.items():  # process-wide, like tf32: inductor's config is global
        setattr(inductor, key, value)
    pipe.unet.compile(mode="reduce-overhead")


def _compile_check(env: RecipeEnv) -> str | None:
    import shutil

    if not env.cuda and shutil.which("g++") is None and shutil.which("c++") is None:
        return "torch.compile on CPU needs a C++ compiler (g++), which is not on PATH"
    return None


def recipes() -> list[Recipe]:
    out = []
    for mode, suffix in ((None, ""), ("reduce-overhead", "-reduce-overhead"), ("max-autotune", "-max-autotune")):
        name = f"compile-unet{suffix}"
        cost = f"; {COMPILE_COST[name]}" if name in COMPILE_COST else ""
        out.append(Recipe(name, f"torch.compile of the UNet (mode {mode or 'default'}{cost})", "compile",
                          "a C++ compiler on CPU", slots=("compile:unet",), apply_fn=_compile("unet", mode),
                          check_fn=_compile_check))
    out.append(Recipe("compile-unet-tuned", "torch.compile of the UNet with CUDA graphs and diffusers' inductor "
                      "settings (1x1 convolutions as matmuls, coordinate-descent tuning, no epilogue fusion; "
                      "process-wide); longer first call than reduce-overhead alone", "compile", "CUDA",
                      slots=("compile:unet",), apply_fn=_compile_tuned,
                      check_fn=lambda env: None if env.cuda else "its Triton tuning needs a CUDA device"))
    out.append(Recipe("compile-unet-frozen", "torch.compile of the UNet with its weights frozen into the graph "
                      "(prepacked for oneDNN on CPU; later weight changes are not seen)", "compile",
                      "a C++ compiler on CPU", slots=("compile:unet",), apply_fn=_compile("unet", freezing=True),
                      check_fn=_compile_check))
    out.append(Recipe("compile-unet-regional", "torch.compile of the UNet's repeated transformer blocks only "
                      "(much shorter compile)", "compile", "a C++ compiler on CPU", slots=("compile:unet",),
                      apply_fn=_compile("unet", regional=True), check_fn=_compile_check))
    out.append(Recipe("compile-vae", "torch.compile of the VAE decoder", "compile", "a C++ compiler on CPU",
                      slots=("compile:vae",), apply_fn=_compile("vae"), check_fn=_compile_check))
    return out


INCOMPATIBLE: dict[frozenset[str], str] = {
    frozenset(("sequential-cpu-offload", name)): "sequential offload moves weights inside the forward pass, which "
    "torch.compile cannot trace (seed 002's expert tier combines them: it does not work)"
    for name in (*UNET_COMPILES, "compile-vae")
}
