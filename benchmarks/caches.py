"""The cache family on one model: each cache recipe's end-to-end latency, peak memory, skipped evaluations and
trajectory fidelity against the same pipeline without a cache, and (trained models) held-out adherence (issue 19).

Latency, memory, skips and trajectories come from one ``lab.compare`` (median of ``--repeats`` per prompt after
``--warmup``); adherence from ``--prompts`` held-out shape prompts per recipe (benchmarks/adherence.py's set),
generated in one batch. The load average is read before and after: this machine is shared.

Usage:
    python benchmarks/caches.py [--model tiny-flux] [--steps 28] [--repeats 5] [--prompts 50] [--out runs/caches]
    python benchmarks/caches.py --model tiny --recipes fp32,pab-2,deepcache-3
Resumable: re-running with the same --out skips finished recipes. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import lab

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "tiny-flux": ["fp32", "first-block-cache-0.2", "first-block-cache-0.4", "mag-cache-0.1", "mag-cache-0.3",
                  "taylorseer-3", "faster-cache-2", "pab-2", "pab-3"],
    "tiny": ["fp32", "pab-2", "pab-3", "deepcache-2", "deepcache-3"],
}


def adherence_of(model: str, recipe: str, cases, prompts: list[str], steps: int) -> float:
    """Mean adherence over ``prompts`` (one image each, seeds 0..n-1) with ``recipe`` applied."""
    import torch

    prepared = lab.prepare(model, recipe, device="cpu", cases=cases)
    generators = [torch.Generator("cpu").manual_seed(i) for i in range(len(prompts))]
    with torch.no_grad():
        images = prepared.pipe(prompts, num_inference_steps=steps, generator=generators).images
    return lab.adherence(images, prompts).overall


def paired(model: str, baseline: str, recipe: str, case, pairs: int) -> dict:
    """Calls of ``baseline`` and ``recipe`` alternated in this process, ``pairs`` times after one warm-up each:
    the median of the per-pair latency ratios (wall and process CPU time) cancels a load that drifts slowly,
    which a recipe-after-recipe sweep on a shared machine cannot."""
    import statistics

    import torch

    pipes = [lab.prepare(model, r, device="cpu", cases=[case]).pipe for r in (baseline, recipe)]

    def call(pipe) -> tuple[float, float]:
        w, c = time.perf_counter(), time.process_time()
        with torch.no_grad():
            pipe(generator=torch.Generator("cpu").manual_seed(case.seed), **case.pipeline_kwargs())
        return time.perf_counter() - w, time.process_time() - c

    for pipe in pipes:
        call(pipe)
    wall, cpu = [], []
    for _ in range(pairs):
        (bw, bc), (rw, rc) = call(pipes[0]), call(pipes[1])
        wall.append(bw / rw)
        cpu.append(bc / rc)
    q = statistics.quantiles
    return {"paired_speedup_wall": statistics.median(wall), "paired_wall_iqr": q(wall, n=4)[2] - q(wall, n=4)[0]
            if len(wall) > 1 else 0.0, "paired_speedup_cpu": statistics.median(cpu)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-flux")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cases", type=int, default=2, help="prompts of the model's prompt set for the timings")
    parser.add_argument("--prompts", type=int, default=50, help="held-out prompts for adherence (trained models)")
    parser.add_argument("--recipes", type=lambda v: v.split(","), default=None,
                        help="comma-separated, the baseline first (default: the model's cache sweep)")
    parser.add_argument("--pairs", type=int, default=5, help="alternated baseline/recipe calls per recipe (0: none)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine two threads each spin-wait ~10x slower)")
    parser.add_argument("--out", default=None, help="default: runs/caches-<model>")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    recipes = lab.recipes.fitting(args.recipes or RECIPES.get(args.model, RECIPES["tiny-flux"]), args.model)
    out = Path(args.out or ROOT / "runs" / f"caches-{args.model}")
    cases = [c.with_overrides(steps=args.steps)
             for c in lab.load_prompts(lab.default_prompts(args.model))][:args.cases]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    cmp = lab.compare(args.model, recipes, cases, repeats=args.repeats, warmup=args.warmup, out=out, device="cpu",
                      isolate=False)
    frame = cmp.to_frame()
    columns = [c for c in ("latency_s", "latency_iqr_s", "speedup", "peak_mem_mb", "cache_skipped",
                           "trajectory_rel_err", "trajectory_max_drift", "fidelity_rel_err", "reason")
               if c in frame]
    table = frame[columns].copy()
    from lab.models import EMBEDDED

    if args.pairs:
        rows = {r: paired(args.model, recipes[0], r, cases[0], args.pairs) for r in table.index[1:]
                if frame.loc[r, "ok"] > 0}
        for name in ("paired_speedup_wall", "paired_wall_iqr", "paired_speedup_cpu"):
            table[name] = [rows[r][name] if r in rows else None for r in table.index]

    if args.model in EMBEDDED and EMBEDDED[args.model].trained:
        prompts = lab.shapes.held_out_prompts(args.prompts)
        scores = {}
        for recipe in table.index:
            if frame.loc[recipe, "ok"] > 0:
                scores[recipe] = adherence_of(args.model, recipe, cases, prompts, args.steps)
                print(f"{recipe}: adherence {scores[recipe]:.3f}", flush=True)
        table["adherence"] = [scores.get(r) for r in table.index]
        table["adherence_drop"] = scores.get(recipes[0], float("nan")) - table["adherence"]
    load_after = os.getloadavg()
    info = {"command": " ".join(["python", *sys.argv]), "model": args.model, "steps": args.steps,
            "threads": torch.get_num_threads(),
            "load_average_before": load_before, "load_average_after": load_after,
            "seconds": round(time.perf_counter() - t0, 1), "table": json.loads(table.to_json(orient="index"))}
    (out / "caches.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    print(f"\n{info['command']}\nload average before {load_before}, after {load_after}; {info['seconds']} s; "
          f"{info['threads']} torch thread(s)\n")
    print(table.round(4).to_markdown())


if __name__ == "__main__":
    main()
