"""Profiler overhead (profiled vs unprofiled wall time) and trace size per recorded step.

Usage: python benchmarks/profiler_overhead.py [--repeats 3] [--out runs/profiler_overhead]
Cases: tiny at 64², 8 steps; sd15-arch at 256², 2 steps (fp32, CPU). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import pandas as pd

import lab
from lab.benchmarking import timed_loop

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = [("tiny", 64, 8), ("sd15-arch", 256, 2)]


def measure(model: str, size: int, steps: int, repeats: int) -> list[dict]:
    pipe = lab.load_pipeline(model, device="cpu")
    case = lab.load_prompts("seed002")[0].with_overrides(steps=steps, height=size, width=size)
    timed_loop(pipe, case, repeats=1)  # warm-up
    plains: list[float] = []
    variants = sorted({1, steps})
    walls: dict[int, list[float]] = {r: [] for r in variants}
    sizes: dict[int, list[int]] = {r: [] for r in variants}
    with tempfile.TemporaryDirectory() as tmp:
        lab.profile(pipe, case, record_steps=1, out_dir=tmp, warmup=0)  # the profiler's own start-up
    for _ in range(repeats):  # interleaved, so drift and order hit every variant alike
        plains += timed_loop(pipe, case, repeats=1)
        for record_steps in variants:
            with tempfile.TemporaryDirectory() as tmp:
                res = lab.profile(pipe, case, record_steps=record_steps, out_dir=tmp, warmup=0)
            walls[record_steps].append(res.wall_s)
            sizes[record_steps].append(res.trace_bytes)
    plain = statistics.median(plains)
    rows = []
    for record_steps in variants:
        profiled = statistics.median(walls[record_steps])
        rows.append({"model": model, "size": size, "steps": steps, "timesteps": res.denoising_steps,
                     "record_steps": record_steps, "plain_s": plain, "profiled_s": profiled,
                     "overhead_pct": 100 * (profiled / plain - 1),
                     "trace_mb": statistics.median(sizes[record_steps]) / 1e6})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "runs" / "profiler_overhead"))
    args = parser.parse_args()
    rows = [r for cfg in CONFIGS for r in measure(*cfg, args.repeats)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = lab.Environment.capture("cpu").to_dict()
    (out / "profiler_overhead.json").write_text(json.dumps({"rows": rows, "env": env}, indent=2))
    print(pd.DataFrame(rows).round(3).to_markdown(index=False))
    print(f"\nenvironment: {env['cpu_model']}, {env['torch_threads']} threads, torch {env['packages']['torch']}, "
          f"commit {env['git_commit']}")


if __name__ == "__main__":
    main()
