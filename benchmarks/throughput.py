"""Batch sweep: images/s, latency per call and peak memory per batch size (``lab.batch_sweep``).

Usage:
    python benchmarks/throughput.py --model tiny --batches 1,2,4,8 --out runs/throughput-tiny
    python benchmarks/throughput.py --model sd15-arch --size 256 --steps 4 --recipe bf16+sdpa+channels-last \
        --batches 1,2,4 --repeats 2 --out runs/throughput-sd15

Writes throughput.json / .md / .png in --out with the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import time

from lab.cases import default_prompts, load_prompts
from lab.plots import plot_throughput
from lab.results import atomic_write_text
from lab.throughput import batch_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--recipe", default="")
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--images-per-prompt", default="1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-budget", type=float, default=None, help="MiB")
    parser.add_argument("--out", default="runs/throughput")
    args = parser.parse_args()
    case = load_prompts(default_prompts(args.model))[0].with_overrides(steps=args.steps, height=args.size,
                                                                      width=args.size)
    before, start = os.getloadavg(), time.perf_counter()
    result = batch_sweep(args.model, [int(b) for b in args.batches.split(",")],
                         images_per_prompt=[int(k) for k in args.images_per_prompt.split(",")], recipe=args.recipe,
                         device="cpu", case=case, repeats=args.repeats)
    wall, after = time.perf_counter() - start, os.getloadavg()
    os.makedirs(args.out, exist_ok=True)
    result.save(os.path.join(args.out, "throughput.json"))
    plot_throughput(result, path=os.path.join(args.out, "throughput.png"))
    text = (result.to_markdown() + f"\n\nload average {', '.join(f'{x:.1f}' for x in before)} before, "
            f"{', '.join(f'{x:.1f}' for x in after)} after; {wall:.0f} s wall")
    if args.memory_budget:
        fit = result.largest_fit(args.memory_budget)
        text += f"\n\nlargest batch within {args.memory_budget:g} MiB: {fit.images} ({fit.reason})"
    atomic_write_text(os.path.join(args.out, "throughput.md"), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
