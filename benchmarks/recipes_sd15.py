"""Each recipe's latency and peak-memory ratio against fp32 on sd15-arch (issue: compare & optimize).

Usage: python benchmarks/recipes_sd15.py [--size 256] [--steps 4] [--repeats 2] [--out runs/recipes_sd15]
Resumable: re-running with the same --out skips finished recipes. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lab  # noqa: E402

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
    parser.add_argument("--out", default=str(ROOT / "runs" / "recipes_sd15"))
    args = parser.parse_args()
    case = lab.Case("a photo of an astronaut riding a horse on mars", steps=args.steps, height=args.size,
                    width=args.size, name="astronaut")
    cmp = lab.compare(args.model, RECIPES, [case], repeats=args.repeats, warmup=1, out=args.out, device=args.device)
    frame = cmp.to_frame()
    base = frame.loc["fp32"]
    base_unet = cmp.record("fp32", "astronaut").weight_bytes["unet"]
    print("| recipe | status | latency s | latency ratio (÷ fp32) | first call s | peak mem MB | mem ratio | "
          "UNet weights ÷ fp32 | SSIM vs fp32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for recipe, row in frame.iterrows():
        if row["ok"] == 0:
            print(f"| {recipe} | {row['status']} | – | – | – | – | – | – | {row.get('reason', '')} |")
            continue
        unet = cmp.record(recipe, "astronaut").weight_bytes["unet"]
        print(f"| {recipe} | ok | {row['latency_s']:.2f} | {row['latency_s'] / base['latency_s']:.2f} | "
              f"{row['first_call_s']:.1f} | {row['peak_mem_mb']:.0f} | {row['peak_mem_mb'] / base['peak_mem_mb']:.2f} | "
              f"{base_unet / unet:.2f}× smaller | {row['ssim']:.3f} |")
    env = lab.Environment.load(Path(args.out) / "environment.json")
    print(f"\n{args.model} at {args.size}², {args.steps} steps, {args.repeats} repeats after 1 warm-up; "
          f"{env.cpu_model}, {env.torch_threads} threads, torch {env.packages['torch']}, commit {env.git_commit}")


if __name__ == "__main__":
    main()
