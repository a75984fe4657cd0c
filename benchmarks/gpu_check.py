"""One-call GPU verification on an H100/H200: peaks, diagnosis, ladders on sd15-arch and sdxl-arch, targets.

Usage:
    python benchmarks/gpu_check.py --out runs/gpu-check          # one H100/H200, cold compile cache: <= 9 min
    python benchmarks/gpu_check.py --smoke --out runs/gpu-smoke  # CPU, seconds: what CI runs

Writes gpu_check.json and gpu_check.md (environment, peaks beside an independent 8192³ timing, findings,
ladders, each target met / missed / not measured). What runs is `lab.gpucheck` (read its docstring).
"""

from __future__ import annotations

import argparse

import lab.gpucheck


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gpu-check")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU, no compile (CI)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    try:
        check = lab.gpucheck.run_gpu_check(args.out, smoke=args.smoke, device=args.device, progress=not args.quiet)
    except lab.LabError as err:
        parser.exit(2, f"error: {err}\n")
    print(check.to_markdown())
    print(f"wrote {args.out}/gpu_check.json and gpu_check.md")


if __name__ == "__main__":
    main()
