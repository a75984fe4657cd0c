"""Verdicts on a quiet and on a busy host: identical computations, and a real difference, with and without a CPU hog.

Usage: python benchmarks/contention.py [--model tiny] [--size 0] [--steps 4] [--repeats 5] [--hog 1]
                                       [--real-model sd15-arch --real-size 256 --real-steps 2] [--out runs/contention]
                                       [--judge]  (verdicts of the runs already in --out, measuring nothing)
For each pair (fp32 against the same computation spelled per component; fp32 against bf16 on the real model) it
runs compare twice, without and then with ``--hog`` spinning processes beside it, and prints one Markdown row per
run: the host as recorded, the measured speed-up, its 95 % bootstrap interval and the verdict.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import lab
from lab import host
from lab.experiments import Comparison, compare

SAME = ("fp32", "fp32-text+fp32-denoiser+fp32-vae")


def _run(model: str, recipes, case, args, out: Path, hogs: int):
    shutil.rmtree(out, ignore_errors=True)
    run = {"repeats": args.repeats, "warmup": 1, "device": "cpu", "progress": False, "out": out}
    if hogs:
        with host.hog(seconds=3600, processes=hogs):
            return compare(model, list(recipes), [case], **run)
    return compare(model, list(recipes), [case], **run)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--size", type=int, default=0)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--hog", type=int, default=1, help="spinning processes beside the busy runs")
    p.add_argument("--real-model", default="sd15-arch", help="'' skips the real-difference pair")
    p.add_argument("--real-size", type=int, default=256)
    p.add_argument("--real-steps", type=int, default=2)
    p.add_argument("--out", default="runs/contention")
    p.add_argument("--judge", action="store_true", help="measure nothing: judge the runs already in --out again")
    args = p.parse_args()
    pairs = [(args.model, SAME, args.size or None, args.steps, "identical computations")]
    if args.real_model:
        pairs.append((args.real_model, ("fp32", "bf16"), args.real_size, args.real_steps, "a real difference"))
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {args.repeats} repeats after "
          "1 warm-up, each recipe in its own worker\n")
    print("| model | pair | host during the runs | speed-up | 95 % interval | verdict |")
    print("|---|---|---|---|---|---|")
    for model, recipes, size, steps, what in pairs:
        case = lab.Case("a red circle on the left", steps=steps, height=size, width=size, name="c")
        for hogs in (0, args.hog):
            folder = Path(args.out) / f"{model}-{'hog' if hogs else 'quiet'}"
            cmp = Comparison.load(folder) if args.judge else _run(model, recipes, case, args, folder, hogs)
            v = cmp.verdict(recipes[1])
            if v is None:  # a run failed: say which and go on
                errors = "; ".join(f"{r.recipe}: {r.status}" for r in cmp.records if r.status != "ok")
                print(f"| {model} | {recipes[0]} vs {recipes[1]} | | no result ({errors}) | | |", flush=True)
                continue
            seen = f"busy ({cmp.busy})" if cmp.busy else "quiet"
            if hogs:
                seen += f", {hogs} hog process{'es' if hogs > 1 else ''}"
            print(f"| {model} {size or 'native'}² {steps} steps | {recipes[0]} vs {recipes[1]} ({what}) | {seen} | "
                  f"{v.speedup:.2f}× | {v.low:.2f}–{v.high:.2f} | {v.verdict}{f' ({cmp.drift})' if cmp.drift else ''} |",
                  flush=True)


if __name__ == "__main__":
    main()
