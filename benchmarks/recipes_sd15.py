"""Each recipe's latency and peak-memory ratio against fp32 on sd15-arch (issue: compare & optimize).

Usage: python benchmarks/recipes_sd15.py [--size 256] [--steps 4] [--repeats 2] [--recipes fp32,bf16,...]
       [--out runs/recipes_sd15]
Resumable: re-running with the same --out skips finished recipes. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lab

ROOT = Path(__file__).resolve().parents[1]

RECIPES = [
    "fp32", "fp16", "bf16", "math-attention", "attention-slicing", "fused-qkv", "channels-last",
    "bf16+channels-last", "quanto-unet-int8w", "bf16+quanto-unet-int8w", "quanto-unet-int4w",
    "bf16+quanto-unet-int4w", "quanto-unet-int8w-int8a", "vae-slicing", "vae-tiling", "cache-prompt-embeds",
    "dpmpp-2m-karras+steps-2", "model-cpu-offload", "compile-unet", "bf16+channels-last+compile-unet",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd15-arch")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--recipes", type=lambda v: v.split(","), default=RECIPES,
                        help="comma-separated, fp32 (the baseline) first; default: the whole list above")
    parser.add_argument("--out", default=str(ROOT / "runs" / "recipes_sd15"))
    args = parser.parse_args()
    if args.recipes[0] != "fp32":
        parser.error(f"--recipes must start with fp32, the baseline every ratio is against, got {args.recipes[0]!r}")
    case = lab.load_prompts("seed002")[0].with_overrides(steps=args.steps, height=args.size, width=args.size)
    cmp = lab.compare(args.model, args.recipes, [case], repeats=args.repeats, warmup=1, out=args.out,
                      device=args.device)
    frame = cmp.to_frame()
    base_unet = cmp.record("fp32", case.name).weight_bytes["unet"]
    frame["unet_weights_x_smaller"] = [base_unet / cmp.record(r, case.name).weight_bytes["unet"]
                                       if cmp.record(r, case.name).weight_bytes else None for r in frame.index]
    frame["mem_ratio"] = frame["peak_mem_mb"] / frame.loc["fp32", "peak_mem_mb"]
    print(frame.round(3).to_markdown())
    env = lab.Environment.load(Path(args.out) / "environment.json")
    print(f"\n{args.model} at {args.size}², {args.steps} steps, {args.repeats} repeats after 1 warm-up; "
          f"{env.cpu_model}, {env.torch_threads} threads, torch {env.packages['torch']}, commit {env.git_commit}")


if __name__ == "__main__":
    main()
