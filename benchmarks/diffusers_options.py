"""Issue 19's diffusers options beside lab's own: peak memory while loading (load-time quantization, GGUF) against
quantizing after the load, and LoRA hotswap on a compiled denoiser against a plain reload.

Usage:
    python benchmarks/diffusers_options.py loading --model tiny-flux
    python benchmarks/diffusers_options.py hotswap --model tiny [--backend inductor] [--steps 2]
The recipes' latency, peak memory during generation and fidelity come from benchmarks/dit_recipes.py --recipes.
Prints Markdown, with the load average read before and after (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os

import lab

LOADING = {
    "tiny-flux": ["fp32", "quanto-denoiser-int8w", "load-quanto-denoiser-int8w", "gguf-denoiser-q8_0",
                  "gguf-denoiser-q4_0", "layerwise-fp8-denoiser"],
    "tiny": ["fp32", "quanto-denoiser-int8w", "load-quanto-denoiser-int8w", "layerwise-fp8-denoiser"],
}


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("loading", "hotswap"))
    parser.add_argument("--model", default="tiny-flux")
    parser.add_argument("--recipes", type=lambda v: v.split(","), default=None, help="loading: comma-separated")
    parser.add_argument("--backend", default="inductor", help="hotswap: the torch.compile backend")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    before = _load()
    if args.what == "loading":
        from lab.loadtime import export_gguf, model_folder

        recipes = args.recipes or LOADING.get(args.model, LOADING["tiny"])
        if any(r.startswith("gguf-") for r in recipes):  # exported first: the export is not part of a load
            for r in recipes:
                if r.startswith("gguf-"):
                    export_gguf(model_folder(args.model), r.removeprefix("gguf-denoiser-"))
        frame = lab.loadtime.loading_memory(args.model, recipes)
        print(frame.round(3).to_markdown())
    else:
        from lab.hotswap import compare_hotswap

        result = compare_hotswap(args.model, steps=args.steps, backend=args.backend)
        import pandas as pd

        print(pd.Series(result.to_dict()).to_frame("value").to_markdown())
    env = lab.Environment.capture("cpu")
    print(f"\n{args.model}; {env.cpu_model}, {env.torch_threads} threads, torch {env.packages['torch']}, diffusers "
          f"{env.packages.get('diffusers')}, commit {env.git_commit}; load average (1/5/15 min) {before} before, "
          f"{_load()} after")


if __name__ == "__main__":
    main()
