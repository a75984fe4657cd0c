"""First-step fidelity and image SSIM of precision/quantization recipes against fp32 (lab.fidelity).

Usage: python benchmarks/fidelity.py [--model tiny-random] [--steps 8] [--out runs/fidelity]

On a random-weight model image SSIM against fp32 falls for any change of arithmetic (the trajectories
diverge); the first denoising step's update from identical latents does not. Prints one row per recipe.
"""

from __future__ import annotations

import argparse

import lab

RECIPES = ["fp32", "bf16", "fp16", "quanto-unet-int8w", "quanto-unet-int4w", "bf16+channels-last", "fp32+ddim"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", default="runs/fidelity")
    args = parser.parse_args()
    cases = [c.with_overrides(steps=args.steps) for c in lab.load_prompts("shapes")[:2]]
    cmp = lab.compare(args.model, RECIPES, cases, repeats=1, warmup=0, out=args.out, device="cpu")
    rows = [{"recipe": r.recipe, "case": r.case, "ssim": r.ssim,
             "fidelity_cosine": r.fidelity.cosine if r.fidelity else None,
             "fidelity_rel_error": r.fidelity.rel_error if r.fidelity else None, "note": r.fidelity_note or ""}
            for r in cmp.records if r.status == "ok"]
    import pandas as pd

    print(pd.DataFrame(rows).round(4).to_markdown(index=False))
    print(f"\n{args.model}, {args.steps} steps; {lab.Environment.load(f'{args.out}/environment.json').cpu_model}")


if __name__ == "__main__":
    main()
