"""CPU thread scaling and energy: ``threads-1`` ... ``threads-<cores>`` on one model, each count in its own worker.

Usage: python benchmarks/thread_sweep.py [--model tiny] [--size 64] [--steps 4] [--repeats 5] [--dtype fp32]
       [--recipe R] [--out runs/threads]
Prints the latency per thread count with its spread, the speed-up and efficiency against one thread, the
load average before and after (the cores are shared), and what lab.power could read for energy here.
"""

from __future__ import annotations

import argparse
import os

import lab
from lab import power


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="fp32", help="the dtype the pipeline loads in (bf16 halves sd15's RAM)")
    parser.add_argument("--recipe", default="", help="what each thread count runs on top of (default fp32)")
    parser.add_argument("--out", default="runs/threads")
    args = parser.parse_args()
    size = args.size
    case = lab.Case("a red circle on the left", steps=args.steps, height=size, width=size, name="c")
    scaling = lab.thread_sweep(args.model, [case], recipe=args.recipe, repeats=args.repeats, warmup=1,
                               dtype=args.dtype, out=os.path.join(args.out, f"{args.model}-{size}-{args.steps}"),
                               progress=False)
    print(f"{args.model} {args.dtype} {size}², {args.steps} steps, {args.repeats} repeats after 1 warm-up, "
          "one worker per count\n")
    print(scaling.to_markdown())
    lab.plots.plot_thread_scaling(scaling, path=os.path.join(scaling.out, "thread_scaling.png"))
    counter, why = power.energy_counter("cpu")
    records = lab.Comparison.load(scaling.out).records
    energy = {r.recipe: r.energy for r in records if r.energy is not None}
    print("\nenergy:", "; ".join(f"{k}: {e.joules_per_image:.2f} J/image, {e.mean_watts:.1f} W" if e.readable
                                  else f"{k}: not measured ({e.note})" for k, e in energy.items())
          or f"no run recorded energy ({why})")
    env = lab.Environment.capture("cpu")
    print(f"\n{env.cpu_model}, {env.cpu_count} cores, torch {env.packages.get('torch')}")


if __name__ == "__main__":
    main()
