"""CPU runtimes side by side: lab's best CPU ladder rung against the OpenVINO and ONNX Runtime denoisers, one run.

Usage:
    python benchmarks/cpu_runtimes.py --model sd15-arch --size 256 --steps 4 --out runs/cpu-runtimes-sd15
    python benchmarks/cpu_runtimes.py --model tiny --steps 4 --out runs/cpu-runtimes-tiny
    python benchmarks/cpu_runtimes.py --ladder runs/ladder-frozen/ladder.json ...   # the rung a ladder run found

One `lab.compare` (each recipe in its own worker, so one runtime's memory never counts against the next) of fp32
(the fidelity reference), the rung, `openvino-denoiser` (OpenVINO's default precision: bf16 on AMX),
`openvino-denoiser-f32` and `onnxruntime-denoiser`: latency (median and IQR), first call (the runtimes' export and
compilation happen there), peak memory and fidelity against fp32. Then `lab.recommend(measured=...)` picks from
the same run, and the target (the pick within 5 % of the fastest of rung / OpenVINO / ONNX Runtime) is checked,
against the fastest of all and against the fastest within recommend's first-step fidelity bound.
Writes cpu_runtimes.json / .md beside the compare run, with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import lab
from lab.experiments import compare
from lab.ladder import CASE, LadderResult
from lab.results import atomic_write_text

BEST_RUNG = "bf16+sdpa+channels-last"  # docs/benchmarks.md, "Performance ladder (CPU)", run 3: 4.33x
RUNTIMES = ("openvino-denoiser", "openvino-denoiser-f32", "onnxruntime-denoiser")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd15-arch")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rung", default=None, help=f"lab's rung to hold them against (default {BEST_RUNG})")
    parser.add_argument("--ladder", default=None, help="a ladder.json: its fastest rung without fewer steps")
    parser.add_argument("--out", default="runs/cpu-runtimes")
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="the runtime recipes to run, in order")
    args = parser.parse_args()
    rung = args.rung or (LadderResult.load(args.ladder).best().recipe if args.ladder else BEST_RUNG)
    runtimes = args.runtimes.split(",")
    recipes = ["fp32", rung, *runtimes]
    load_before = os.getloadavg()
    start = time.perf_counter()
    case = CASE.with_overrides(steps=args.steps, height=args.size, width=args.size)
    cmp = compare(args.model, recipes, [case], repeats=args.repeats, warmup=1, out=args.out, device="cpu",
                  isolate=not args.in_process)
    wall = time.perf_counter() - start
    load_after = os.getloadavg()
    frame = cmp.to_frame()
    frame["first_call_extra_s"] = frame["first_call_s"] - frame["latency_s"]  # export + compile for the runtimes
    rec = lab.recommend(priority="balance", measured=cmp, model=args.model)
    contenders = [r for r in (rung, *runtimes) if r in frame.index and frame.loc[r, "ok"] > 0]
    fastest = min(contenders, key=lambda r: frame.loc[r, "latency_s"]) if contenders else None
    verdict = None
    if fastest is not None and rec.recipe in frame.index:
        ratio = float(frame.loc[rec.recipe, "latency_s"] / frame.loc[fastest, "latency_s"])
        verdict = {"pick": rec.recipe, "fastest": fastest, "ratio": ratio, "met": bool(ratio <= 1.05)}
        # the fastest contender whose first step stays within recommend's fidelity bound: what it may pick
        bounded = [r for r in contenders if frame.loc[r, "fidelity_rel_err"] <= lab.presets.MAX_REL_ERROR]
        if bounded:
            best = min(bounded, key=lambda r: frame.loc[r, "latency_s"])
            within = float(frame.loc[rec.recipe, "latency_s"] / frame.loc[best, "latency_s"])
            verdict |= {"fastest_within_bound": best, "ratio_within_bound": within,
                        "met_within_bound": bool(within <= 1.05)}
    columns = [c for c in ("latency_s", "latency_iqr_s", "speedup", "first_call_s", "first_call_extra_s",
                           "peak_mem_mb", "fidelity_rel_err", "fidelity_cos", "ssim", "status", "reason")
               if c in frame]
    table = frame[columns].round(4)
    summary = {"model": args.model, "size": args.size, "steps": args.steps, "repeats": args.repeats, "rung": rung,
               "load_before": load_before, "load_after": load_after, "wall_s": wall,
               "table": json.loads(table.to_json(orient="index")), "recommendation": rec.to_dict(),
               "target": verdict}
    atomic_write_text(os.path.join(args.out, "cpu_runtimes.json"), json.dumps(summary, indent=2) + "\n")
    text = (f"{table.to_markdown()}\n\n{args.model}, {args.size}², {args.steps} steps, median of {args.repeats} "
            f"after 1 warm-up; load average {', '.join(f'{x:.1f}' for x in load_before)} before, "
            f"{', '.join(f'{x:.1f}' for x in load_after)} after; {wall:.0f} s wall\n\n{rec}\n\ntarget: {verdict}")
    atomic_write_text(os.path.join(args.out, "cpu_runtimes.md"), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
