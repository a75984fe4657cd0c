"""Performance ladder: cumulative recipes on a realistic architecture, against the hardware limit.

Usage:
    python benchmarks/ladder.py                       # CPU: sd15-arch, 256², 4 steps
    python benchmarks/ladder.py --model sd15-arch --size 512 --steps 30 --device cuda   # GPU
    python benchmarks/ladder.py --model sdxl-arch --size 1024 --steps 30 --device cuda
    python benchmarks/ladder.py --smoke               # CI: tiny, 1 repeat, 2 steps, regional compile

The rungs and the maths are `lab.ladder` (read its docstring); this script only parses, calls and prints.
Resumable with --out. Writes ladder.json and ladder.md beside the compare run.
"""

from __future__ import annotations

import argparse

import lab.ladder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd15-arch")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny, 1 repeat, 2 steps, regional compile (CI)")
    args = parser.parse_args()
    result = lab.ladder.run_ladder(args.model, size=args.size, steps=args.steps, repeats=args.repeats,
                                   device=args.device, out=args.out, smoke=args.smoke)
    print(result.to_markdown())


if __name__ == "__main__":
    main()
