"""Does inductor's weight freezing make the compiled UNet faster on this CPU? An A/B in fresh processes.

Usage:
    python benchmarks/compile_freezing.py                     # sd15-arch, 256², batch 2, bf16 + channels-last
    python benchmarks/compile_freezing.py --rounds 2 --calls 8
    python benchmarks/compile_freezing.py --base fp32 --model tiny --size 64 --rounds 1 --calls 2   # CI smoke

Each variant (eager, compile-unet, compile-unet-frozen) runs in its own Python process, because
inductor's configuration and caches are process-wide; variants alternate within a round (ABC ABC) so
a slow spell of the shared host hits all of them. Per process: load, apply the recipe, one UNet call
to compile and warm up, then the median of --calls timed UNet calls (one call = one denoising step of
a CFG batch). Prints a table and writes JSON with the environment. A variant that fails is recorded
with its exception and the tail of its stderr, and the other variants go on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]



def variants(base: str) -> list[str]:
    """Eager, compiled and compiled-with-frozen-weights, each on top of ``base``."""
    return [base, f"{base}+compile-unet", f"{base}+compile-unet-frozen"]


def failure(stderr: str) -> dict:
    """The exception line of a failed child (not dynamo's trailing advice) and the tail of its stderr."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    raised = [line for line in lines if not line.startswith(" ") and ("Error" in line or "Exception" in line)]
    return {"error": raised[-1] if raised else (lines[-1] if lines else "no output"), "stderr_tail": lines[-40:]}


def one(model: str, recipe: str, size: int, calls: int) -> dict:
    """Time the UNet of ``model`` with ``recipe`` applied, in this process."""
    import torch

    import lab

    start = time.perf_counter()
    pipe = lab.load_pipeline(model, device="cpu", recipe=recipe)
    unet = pipe.unet
    latent = size // pipe.vae_scale_factor
    sample = torch.randn(2, unet.config.in_channels, latent, latent, dtype=unet.dtype)
    if "channels-last" in recipe:
        sample = sample.to(memory_format=torch.channels_last)
    text = torch.randn(2, pipe.tokenizer.model_max_length, unet.config.cross_attention_dim, dtype=unet.dtype)
    t = torch.tensor(500)
    with torch.inference_mode():
        first = time.perf_counter()
        reference = unet(sample, t, encoder_hidden_states=text).sample
        first = time.perf_counter() - first
        seconds = []
        for _ in range(calls):
            tick = time.perf_counter()
            out = unet(sample, t, encoder_hidden_states=text).sample
            seconds.append(time.perf_counter() - tick)
    return {"recipe": recipe, "first_call_s": first, "setup_s": time.perf_counter() - start - sum(seconds),
            "latency": lab.Latency.from_values(seconds).to_dict(), "calls": seconds,
            "stable": bool(torch.allclose(out, reference))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd15-arch")
    parser.add_argument("--base", default="bf16+channels-last", help="recipe the three variants share")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "runs" / "compile-freezing.json"))
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the child process's variant
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.model, args.one, args.size, args.calls)))
        return

    import lab

    try:
        lab.recipes.parse(args.base)
    except lab.LabError as error:
        parser.error(str(error))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    environment = lab.Environment.capture("cpu").to_dict()
    results = []
    for round_ in range(args.rounds):
        for recipe in variants(args.base):
            child = subprocess.run([sys.executable, __file__, "--one", recipe, "--model", args.model, "--size",
                                    str(args.size), "--calls", str(args.calls)], capture_output=True, text=True)
            if child.returncode != 0:
                results.append({"recipe": recipe, "round": round_, **failure(child.stderr)})
            else:
                results.append({**json.loads(child.stdout.strip().splitlines()[-1]), "round": round_})
            print(json.dumps({k: v for k, v in results[-1].items() if k not in ("calls", "stderr_tail")}), flush=True)
            # Rewritten after every process, so an interrupted A/B keeps what finished.
            out.write_text(json.dumps({"args": vars(args), "environment": environment, "results": results},
                                      indent=1, default=str))
    import pandas as pd

    ran = [{**r, "median_s": r["latency"]["median"]} for r in results if "error" not in r]
    if ran:
        table = pd.DataFrame(ran).groupby("recipe", sort=False).agg(
            unet_step_s=("median_s", "median"), spread_s=("median_s", lambda s: s.max() - s.min()),
            first_call_s=("first_call_s", "median"), processes=("median_s", "size"))
        if args.base in table.index:
            table["x eager"] = table.loc[args.base, "unet_step_s"] / table["unet_step_s"]
        print(table.round(3).to_markdown())
    for r in results:
        if "error" in r:
            print(f"{r['recipe']} (round {r['round']}) failed: {r['error']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
