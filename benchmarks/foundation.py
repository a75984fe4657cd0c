"""Foundation figures: harness overhead, repeatability across processes, import cost.

Usage: python benchmarks/foundation.py [--steps 20] [--pairs 40] [--out runs/foundation]
Prints a Markdown table (pasted into docs/benchmarks.md) and writes foundation.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import lab
from lab.benchmarking import timed_loop

ROOT = Path(__file__).resolve().parents[1]


def harness_overhead(steps: int, pairs: int) -> dict:
    """Alternate one bare call and one harness call (ABBA order) and take the median paired ratio.

    Pairing cancels the slow drift of a shared 2-core machine, which otherwise moves block
    medians by several percent either way.
    """
    pipe = lab.load_pipeline("tiny", device="cpu")
    case = lab.load_prompts("seed002")[0].with_overrides(steps=steps)
    timed_loop(pipe, case, repeats=2)  # warm-up

    def harness() -> float:
        return lab.benchmark(pipe, case, warmup=0, repeats=1, progress=False).cases[0].latencies[0]

    bare, timed, ratios = [], [], []
    for i in range(pairs):
        if i % 2:
            h, b = harness(), timed_loop(pipe, case, repeats=1)[0]
        else:
            b, h = timed_loop(pipe, case, repeats=1)[0], harness()
        bare.append(b)
        timed.append(h)
        ratios.append(h / b)
    return {
        "bare_median_s": statistics.median(bare),
        "harness_median_s": statistics.median(timed),
        "overhead_pct": 100 * (statistics.median(ratios) - 1),
        "n_each": pairs,
    }


def repeatability(steps: int, invocations: int = 3) -> dict:
    medians = []
    for i in range(invocations):
        out = ROOT / "runs" / "foundation" / f"repeat-{i}"
        subprocess.run(
            [sys.executable, "-m", "lab", "bench", "--model", "tiny", "--steps", str(steps), "--repeats", "10",
             "--cases", "1", "--quiet", "--out", str(out)],
            cwd=ROOT, check=True, capture_output=True,
        )
        medians.append(lab.BenchmarkResult.load(out / "results.json").cases[0].latency.median)
    mean = statistics.fmean(medians)
    return {"medians_s": medians, "cv_pct": 100 * statistics.stdev(medians) / mean}


def import_cost(runs: int = 5) -> dict:
    code = "import time,sys; t=time.perf_counter(); import lab; print(time.perf_counter()-t, 'diffusers' in sys.modules)"
    seconds, loaded = [], set()
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
        dt, diffusers = out.stdout.split()
        seconds.append(float(dt))
        loaded.add(diffusers)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import lab"], cwd=ROOT, check=True)
    return {"import_lab_s": statistics.median(seconds), "process_wall_s": time.perf_counter() - start,
            "imports_diffusers": loaded != {"False"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--out", default=str(ROOT / "runs" / "foundation"))
    args = parser.parse_args()
    results = {
        "harness": harness_overhead(args.steps, args.pairs),
        "repeatability": repeatability(args.steps),
        "import": import_cost(),
        "env": lab.Environment.capture("cpu").to_dict(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "foundation.json").write_text(json.dumps(results, indent=2))
    h, r, i = results["harness"], results["repeatability"], results["import"]
    print("| figure | value | target |\n|---|---|---|")
    print(f"| harness overhead vs bare loop (tiny, {args.steps} steps, {h['n_each']} pairs) | "
          f"{h['overhead_pct']:+.2f}% (median paired ratio; medians {h['harness_median_s']*1e3:.1f} vs "
          f"{h['bare_median_s']*1e3:.1f} ms) | ≤ 2% |")
    print(f"| CV of the median over 3 `lab bench` invocations | {r['cv_pct']:.2f}% "
          f"({', '.join(f'{m*1e3:.1f}' for m in r['medians_s'])} ms) | ≤ 5% |")
    print(f"| `import lab` | {i['import_lab_s']*1e3:.1f} ms (process {i['process_wall_s']*1e3:.0f} ms), "
          f"imports diffusers: {i['imports_diffusers']} | ≤ 1.5 s, no diffusers |")
    print(f"\nenvironment: {results['env']['cpu_model']}, {results['env']['torch_threads']} threads, "
          f"torch {results['env']['packages']['torch']}, diffusers {results['env']['packages']['diffusers']}, "
          f"commit {results['env']['git_commit']}")


if __name__ == "__main__":
    main()
