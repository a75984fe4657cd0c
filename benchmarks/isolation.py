"""Isolated runs: order effects in one process, the cost of a worker per run, and a two-slot local sweep.

Usage: python benchmarks/isolation.py order [--model sd15-arch] [--a quanto-unet-int8w] [--b bf16]
       python benchmarks/isolation.py cost [--model tiny]
       python benchmarks/isolation.py slots [--model tiny]
       (all: [--size 128] [--steps 2] [--repeats 3] [--out runs/isolation])
Each prints a Markdown table and the machine it ran on. Keep it nice'd on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

import lab
from lab.executors import ExecutorConfig

ROOT = Path(__file__).resolve().parents[1]


def _case(args) -> lab.Case:
    return lab.Case("a red circle on the left", steps=args.steps, height=args.size, width=args.size, name="c")


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def order(args) -> None:
    """Recipe B measured alone, after recipe A in one process, and after A isolated."""
    case, out = _case(args), Path(args.out) / "order"
    run = {"repeats": args.repeats, "warmup": 1, "device": "cpu", "progress": False}
    runs = {
        "B alone, in-process (fresh process)": lab.compare(args.model, [args.b], [case], out=_fresh(out / "alone"),
                                                           isolate=False, **run),
        f"B after A ({args.a}), one process": lab.compare(args.model, [args.a, args.b], [case],
                                                          out=_fresh(out / "inprocess"), isolate=False, **run),
        f"B after A ({args.a}), isolated": lab.compare(args.model, [args.a, args.b], [case],
                                                       out=_fresh(out / "isolated"), isolate=True, **run),
    }
    rows = []
    for label, cmp in runs.items():
        r = cmp.record(args.b, case.name)
        rows.append(f"| {label} | {r.latency.median:.3f} | {r.latency.iqr:.3f} | {r.peak_mem_mb:.1f} | "
                    f"{r.peak_rss_mb:.0f} | {r.rss_before_mb:.0f} |")
    print(f"B = {args.b} on {args.model} {args.size}², {args.steps} steps, {args.repeats} repeats after 1 warm-up\n")
    print("| run | B median s | B IQR s | B peak mem MB (model) | B peak RSS MB | B RSS before MB |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    _env(out / "isolated")


def cost(args) -> None:
    """What a worker per run costs: interpreter start, imports, model load + apply, and its whole wall time."""
    case, out = _case(args), _fresh(Path(args.out) / f"cost-{args.model}")
    recipes = ["fp32", "fp32-unet", "fp32-vae"]  # three workers doing the same work
    start = time.perf_counter()
    cmp = lab.compare(args.model, recipes, [case], repeats=1, warmup=0, device="cpu", progress=False, out=out,
                      isolate=True)
    total = time.perf_counter() - start
    keys = ("start_s", "imports_s", "prepare_s", "wall_s")
    workers = [cmp.record(r, case.name).worker for r in recipes]
    med = {k: statistics.median(w[k] for w in workers) for k in keys}
    measured = statistics.median(cmp.record(r, case.name).latency.median for r in recipes)
    print(f"{args.model} {args.size}², {args.steps} steps, 1 call per worker, 3 workers (median), sweep {total:.1f} s\n")
    print("| model | interpreter start s | imports s | load + apply s | worker wall s | the call itself s |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.model} | {med['start_s']:.2f} | {med['imports_s']:.2f} | {med['prepare_s']:.2f} | "
          f"{med['wall_s']:.2f} | {measured:.3f} |")
    _env(out)


def slots(args) -> None:
    """The same sweep on one local slot and on two: wall time, and the same keys and count."""
    case = _case(args)
    recipes = ["fp32", "bf16", "channels-last", "steps-1"]
    results = {}
    for n in (1, 2):
        out = _fresh(Path(args.out) / f"slots-{n}")
        start = time.perf_counter()
        cmp = lab.compare(args.model, recipes, [case], seeds=(0, 1), repeats=args.repeats, warmup=1, device="cpu",
                          progress=False, out=out, isolate=True, executor=ExecutorConfig(workers=n))
        results[n] = (time.perf_counter() - start, cmp)
    keys = {n: sorted(r.key for r in cmp.records) for n, (_, cmp) in results.items()}
    print(f"{args.model} {args.size}², {args.steps} steps, {len(recipes)} recipes x 2 seeds, {args.repeats} repeats\n")
    print("| slots | sweep wall s | runs | ok | median latency of fp32 s |")
    print("|---|---|---|---|---|")
    for n, (wall, cmp) in results.items():
        ok = sum(r.status == "ok" for r in cmp.records)
        print(f"| {n} | {wall:.1f} | {len(cmp.records)} | {ok} | {cmp.record('fp32', 'c').latency.median:.3f} |")
    print(f"\nsame keys and count: {keys[1] == keys[2]} ({len(keys[1])} runs)")
    _env(Path(args.out) / "slots-2")


def _env(out: Path) -> None:
    env = lab.Environment.load(out / "environment.json")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{env.cpu_model}, {env.torch_threads} threads, torch {env.packages['torch']}, commit {env.git_commit}; "
          f"load average {load} (1, 5, 15 min) at the end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("order", "cost", "slots"))
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--a", default="quanto-unet-int8w", help="order: the recipe that runs first")
    parser.add_argument("--b", default="bf16", help="order: the recipe measured after it")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "runs" / "isolation"))
    args = parser.parse_args()
    {"order": order, "cost": cost, "slots": slots}[args.what](args)


if __name__ == "__main__":
    main()
