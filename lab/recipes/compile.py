"""Compile recipes: torch.compile of the denoiser (modes, frozen weights, repeated blocks only) and the VAE decoder.

``compile-denoiser*`` compiles the UNet or the transformer, whichever the model has; ``compile-unet*`` is the
older spelling, kept for UNet models.

On CUDA the mode that pays is ``reduce-overhead`` (CUDA graphs): an eager fp16 UNet step at 512² is
launch-bound on an H100 (41 ms, the host CPU at 100 %), and CUDA graphs replay the whole step at once
(9.2 ms, first call 70-90 s). ``max-autotune`` had not finished tuning after 4 minutes there: opt-in only.
"""

from __future__ import annotations

from ..env import RecipeEnv
from .base import Recipe, all_fits, needs_unet

MODES = (("", None), ("-reduce-overhead", "reduce-overhead"), ("-max-autotune", "max-autotune"))
VARIANTS = ("", "-reduce-overhead", "-max-autotune", "-frozen", "-regional", "-tuned")
UNET_COMPILES = tuple(f"compile-unet{v}" for v in VARIANTS)
DENOISER_COMPILES = tuple(f"compile-denoiser{v}" for v in VARIANTS)
# diffusers' torch.compile guide sets these for the SD UNet: 1x1 convolutions as matmuls, coordinate-descent
# tuning of the generated Triton kernels, no epilogue fusion (it blocks the convolution templates).
TUNED_INDUCTOR = {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True, "epilogue_fusion": False,
                  "coordinate_descent_check_all_directions": True}
# First-call cost measured on an H100 (sd15-arch 512², sdxl-arch 1024²; docs/benchmarks.md "GPU evidence").
COMPILE_COST = {
    "compile-denoiser": "first call ~1 min on an H100 (sd15-arch)",
    "compile-denoiser-reduce-overhead": "first call 70-90 s (sd15-arch) / 118 s (sdxl-arch) on an H100",
    "compile-denoiser-max-autotune": "autotuning had not finished after 4 min on an H100 (sd15-arch): opt-in only",
}


def _compile(component: str, mode: str | None = None, regional: bool = False, freezing: bool = False):
    def apply(pipe, cases):
        from ..denoiser import denoiser

        module = pipe.vae.decoder if component == "vae" else denoiser(pipe)
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

    from ..denoiser import denoiser

    for key, value in TUNED_INDUCTOR.items():  # process-wide, like tf32: inductor's config is global
        setattr(inductor, key, value)
    denoiser(pipe).compile(mode="reduce-overhead")


def _regional_fit(kind) -> str | None:
    return None if kind.repeated_blocks else (f"{kind.denoiser_class} declares no _repeated_blocks, so "
                                              "compile_repeated_blocks has nothing to compile; compile it whole")


def _compile_check(env: RecipeEnv) -> str | None:
    import shutil

    if not env.cuda and shutil.which("g++") is None and shutil.which("c++") is None:
        return "torch.compile on CPU needs a C++ compiler (g++), which is not on PATH"
    return None


def recipes() -> list[Recipe]:
    out = []
    for short in ("denoiser", "unet"):
        what = "the UNet" if short == "unet" else "the denoiser (UNet or transformer)"

        def add(suffix: str, description: str, needs: str, apply_fn, check_fn=_compile_check, extra_fit=None):
            name = f"compile-{short}{suffix}"
            out.append(Recipe(name, description, "compile", needs, slots=("compile:denoiser",), apply_fn=apply_fn,
                              check_fn=check_fn,
                              fit_fn=all_fits(needs_unet(name) if short == "unet" else None, extra_fit)))

        for suffix, mode in MODES:
            cost = f"; {COMPILE_COST[f'compile-denoiser{suffix}']}" if f"compile-denoiser{suffix}" in COMPILE_COST else ""
            add(suffix, f"torch.compile of {what} (mode {mode or 'default'}{cost})", "a C++ compiler on CPU",
                _compile("denoiser", mode))
        add("-tuned", f"torch.compile of {what} with CUDA graphs and diffusers' inductor settings (1x1 convolutions "
            "as matmuls, coordinate-descent tuning, no epilogue fusion; process-wide); longer first call than "
            "reduce-overhead alone", "CUDA", _compile_tuned,
            check_fn=lambda env: None if env.cuda else "its Triton tuning needs a CUDA device")
        add("-frozen", f"torch.compile of {what} with its weights frozen into the graph (prepacked for oneDNN on "
            "CPU; later weight changes are not seen)", "a C++ compiler on CPU", _compile("denoiser", freezing=True))
        add("-regional", f"torch.compile of {what}'s repeated transformer blocks only (compile_repeated_blocks: "
            "much shorter compile)", "a C++ compiler on CPU", _compile("denoiser", regional=True),
            extra_fit=_regional_fit)
    out.append(Recipe("compile-vae", "torch.compile of the VAE decoder", "compile", "a C++ compiler on CPU",
                      slots=("compile:vae",), apply_fn=_compile("vae"), check_fn=_compile_check))
    return out


INCOMPATIBLE: dict[frozenset[str], str] = {
    frozenset(("sequential-cpu-offload", name)): "sequential offload moves weights inside the forward pass, which "
    "torch.compile cannot trace (seed 002's expert tier combines them: it does not work)"
    for name in (*UNET_COMPILES, *DENOISER_COMPILES, "compile-vae")
}
