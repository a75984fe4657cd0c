"""Advance figures: adaptive inference (time saved vs quality lost) and LoRA fused vs unfused latency.

Usage: python benchmarks/advance.py [--model tiny] [--repeats 5] [--out runs/advance]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pandas as pd

import lab

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "runs" / "advance"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = lab.load_pipeline(args.model, device="cpu")
    cases = lab.load_prompts("seed002")
    policy = lab.AdaptivePolicy(min_steps=10, max_steps=30, min_size=64)
    adaptive = lab.adaptive.evaluate_policy(pipe, cases, policy)
    print("Adaptive policy against a fixed 30-step run:\n")
    print(adaptive.round(3).to_markdown(index=False))
    print(f"\nmean time saved {adaptive['time_saved_pct'].mean():.1f}%, mean SSIM {adaptive['ssim'].mean():.3f}, "
          f"min PSNR {adaptive['psnr'].min():.1f} dB")

    case = lab.load_prompts("seed002")[0].with_overrides(steps=20, name="astronaut")
    with tempfile.TemporaryDirectory() as tmp:
        path = lab.lora.make_lora(pipe, Path(tmp) / "lora.safetensors")
        base = lab.benchmark(lab.load_pipeline(args.model, device="cpu"), case, repeats=args.repeats, progress=False)
        lora_pipe = lab.lora.load_lora(lab.load_pipeline(args.model, device="cpu"), path, scale=0.8)
        unfused = lab.benchmark(lora_pipe, case, repeats=args.repeats, progress=False)
        fused = lab.benchmark(lab.lora.fuse(lora_pipe, 0.8), case, repeats=args.repeats, progress=False)
    rows = [("no LoRA", base), ("LoRA unfused", unfused), ("LoRA fused", fused)]
    b = base.cases[0].latency.median
    table = pd.DataFrame([{"variant": name, "median_s": res.cases[0].latency.median, "iqr_s": res.cases[0].latency.iqr,
                           "x_no_lora": res.cases[0].latency.median / b} for name, res in rows])
    print("\n" + table.round(3).to_markdown(index=False))
    env = base.env
    print(f"\n{args.model}, 20 steps, {args.repeats} repeats after 1 warm-up; {env.cpu_model}, "
          f"{env.torch_threads} threads, torch {env.packages['torch']}, commit {env.git_commit}")
    (out / "advance.json").write_text(json.dumps({
        "adaptive": adaptive.to_dict(orient="records"),
        "lora": {name: res.cases[0].latency.to_dict() for name, res in rows}, "env": env.to_dict()}, indent=2))


if __name__ == "__main__":
    main()
