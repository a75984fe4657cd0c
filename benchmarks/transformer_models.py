"""Facts about the embedded transformer models: parameter counts on the meta device, the memory check's
figures, and one real call of a model on this machine (default: sd35m-arch at 256², 1 step) with its time
and the process's peak resident memory.

Usage: python benchmarks/transformer_models.py [--model sd35m-arch] [--dtype fp32] [--size 256] [--steps 1]
       [--threads 1] [--out runs/transformer_models]
Writes ``facts.json`` in ``--out`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import lab
from lab.models import EMBEDDED, available_memory, build_embedded, check_fits, memory_need, parameter_counts

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("tiny-flux", "flux-arch", "sd35m-arch")


def peak_rss() -> int:
    """This process's peak resident set in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    import psutil
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd35m-arch", choices=MODELS, help="the model to run for real")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "runs" / "transformer_models"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    facts: dict = {"command": " ".join(sys.argv), "environment": lab.Environment.capture().to_dict(),
                   "available_bytes": available_memory("cpu"), "total_bytes": psutil.virtual_memory().total}
    for name in MODELS:
        counts = parameter_counts(build_embedded(name, empty=True))
        facts[name] = {"parameters": counts, "published": dict(EMBEDDED[name].published_params),
                       "need": {d: memory_need(name, d).__dict__ | {"total": memory_need(name, d).total}
                                for d in ("fp32", "bf16")}}
        for dtype in ("fp32", "bf16"):
            try:
                facts[name][f"fits {dtype}"] = {"drop": list(check_fits(name, dtype))}
            except lab.ModelUnavailableError as err:
                facts[name][f"fits {dtype}"] = {"refused": str(err)}

    before = peak_rss()
    t0 = time.perf_counter()
    pipe = lab.load_pipeline(args.model, device="cpu", dtype=args.dtype)
    load_s = time.perf_counter() - t0
    weights = sum(lab.weight_bytes(pipe).values())
    t0 = time.perf_counter()
    image = pipe("a red circle on the left, white background", num_inference_steps=args.steps,
                 height=args.size, width=args.size, generator=torch.Generator().manual_seed(0)).images[0]
    call_s = time.perf_counter() - t0
    facts["run"] = {"model": args.model, "dtype": args.dtype, "size": args.size, "steps": args.steps,
                    "threads": args.threads, "dropped": list(getattr(pipe, "lab_dropped", ())),
                    "load_s": round(load_s, 1), "call_s": round(call_s, 1), "image": list(image.size),
                    "weight_bytes": weights, "peak_rss_bytes": peak_rss(), "peak_rss_before_load": before,
                    "peak_over_weights": round(peak_rss() / weights - 1, 3)}
    lab.results.atomic_write_text(out / "facts.json", json.dumps(facts, indent=1) + "\n")
    print(json.dumps({k: v for k, v in facts.items() if k != "environment"}, indent=1))


if __name__ == "__main__":
    main()
