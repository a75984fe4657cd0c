"""Transformer models on this machine: every applicable recipe's latency, peak memory, fidelity (and adherence on
the trained tiny-flux) against fp32, and FLOPs per denoising step from two independent counts (issue 18).

Usage:
    python benchmarks/dit_recipes.py --model tiny-flux [--steps 8] [--repeats 3] [--out runs/dit-tiny-flux]
    python benchmarks/dit_recipes.py --model sd35m-arch --size 256 --steps 1 --repeats 1 --recipes fp32,bf16,...
    python benchmarks/dit_recipes.py --flops           # meta device only: flux-arch, sd35m-arch, tiny-flux
Resumable: re-running with the same --out skips finished recipes. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lab

ROOT = Path(__file__).resolve().parents[1]
RECIPES = [
    "fp32", "bf16", "bf16-denoiser", "fp16-text", "sdpa", "math-attention", "fused-qkv", "channels-last",
    "quanto-denoiser-int8w", "bf16+quanto-denoiser-int8w", "quanto-denoiser-int4w", "quanto-denoiser-int8w-int8a",
    "quanto-text-int8w", "vae-slicing", "vae-tiling", "cache-prompt-embeds", "flow-euler+steps-4",
    "compile-denoiser-regional", "bf16+fused-qkv+compile-denoiser-regional",
]
FLOPS = (("flux-arch", 1024), ("flux-arch", 512), ("sd35m-arch", 1024), ("sd35m-arch", 256), ("tiny-flux", 64))


def flops_table() -> str:
    """FLOPs of one denoiser forward per model and size: FlopCounterMode and the shape-based count."""
    import pandas as pd

    from lab.flops import analytic_step_flops, step_batch, step_flops
    from lab.models import build_embedded

    rows = []
    for model, size in FLOPS:
        pipe = build_embedded(model, empty=True)
        batch = step_batch(pipe, 7.0)  # CFG doubles SD3's batch; FLUX.1 is guidance-distilled (batch 1)
        counted = step_flops(pipe, size, size, batch)["total"]
        analytic = analytic_step_flops(pipe, size, size, batch)["total"]
        rows.append({"model": model, "size": size, "batch": batch, "tflop_flopcounter": counted / 1e12,
                     "tflop_shapes": analytic / 1e12, "ratio": counted / analytic})
    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-flux")
    parser.add_argument("--size", type=int, default=None, help="default: the model's native size")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cases", type=int, default=2, help="prompts of the model's prompt set")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--recipes", type=lambda v: v.split(","), default=RECIPES,
                        help="comma-separated, fp32 (the baseline) first; those that cannot fit are left out")
    parser.add_argument("--out", default=None, help="default: runs/dit-<model>")
    parser.add_argument("--flops", action="store_true", help="only the FLOPs table (meta device, no weights)")
    parser.add_argument("--in-process", action="store_true",
                        help="every recipe in this process (quicker; figures may then depend on run order)")
    args = parser.parse_args()
    if args.flops:
        print(flops_table())
        return
    if args.recipes[0] != "fp32":
        parser.error(f"--recipes must start with fp32, the baseline every ratio is against, got {args.recipes[0]!r}")
    recipes = lab.recipes.fitting(args.recipes, args.model)
    prompts = lab.load_prompts(lab.default_prompts(args.model))[: args.cases]
    cases = [c.with_overrides(steps=args.steps, height=args.size, width=args.size) for c in prompts]
    out = args.out or str(ROOT / "runs" / f"dit-{args.model}")
    cmp = lab.compare(args.model, recipes, cases, repeats=args.repeats, warmup=args.warmup, out=out,
                      device=args.device, isolate=not args.in_process)
    columns = ["status", "latency_s", "latency_iqr_s", "speedup", "peak_mem_mb", "weight_mb", "ssim",
               "fidelity_cos", "fidelity_rel_err", "reason"]
    frame = cmp.to_frame()
    frame = frame[[c for c in columns if c in frame]]  # "reason" only when a recipe failed
    from lab.quality import comparison_adherence

    adherence = comparison_adherence(cmp)
    if adherence:
        frame["adherence"] = [adherence[r].overall if r in adherence else None for r in frame.index]
    print(frame.round(4).to_markdown())
    left_out = [r for r in args.recipes if r not in recipes]
    if left_out:
        print(f"\nleft out (cannot fit {args.model}): {', '.join(left_out)}")
    env = lab.Environment.load(Path(out) / "environment.json")
    print(f"\n{args.model} at {cases[0].height or 'native'} px, {args.steps} steps, {len(cases)} prompt(s), "
          f"{args.repeats} repeats after {args.warmup} warm-up; {env.cpu_model}, {env.torch_threads} threads, "
          f"torch {env.packages['torch']}, diffusers {env.packages.get('diffusers')}, commit {env.git_commit}")


if __name__ == "__main__":
    main()
