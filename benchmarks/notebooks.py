"""How long the demo and each notebook take: the figures the tests used to assert, measured instead.

Usage (from the repository root):
    python -m benchmarks.notebooks [--out runs/bench-notebooks] [--ci] [--notebooks 01 02]
    python -m benchmarks.notebooks --from-index runs/demo/index.json [--wall-s 512 --label "make demo, fresh clone"]

The first form runs the demo's sequence (one-time setup, then every notebook with its defaults, or with CI's
parameters with ``--ci``) and writes ``notebooks.json`` and ``notebooks.md``; the second formats the per-notebook
seconds a finished ``lab demo``/``make demo`` wrote into its ``index.json``, with an externally measured wall time.
Each record carries the CPU count and the load average before and after: a busy machine is slower, not wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

CI_PARAMETERS = {"LAB_MODEL": "tiny", "LAB_DEVICE": "cpu", "LAB_STEPS": "8", "LAB_REPEATS": "1", "LAB_COMPILE": "0"}


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict:
    """CPU count, model and load average now: what the seconds depend on."""
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "processor": platform.processor()
            or platform.machine(), "python": platform.python_version(), "torch": torch.__version__,
            "load_average": _load()}


def to_markdown(record: dict) -> str:
    """A table of notebook, status and seconds, with the total and the conditions it ran under."""
    rows = ["| notebook | status | seconds |", "|---|---|---:|"]
    for nb in record["notebooks"]:
        rows.append(f"| {nb['notebook']} | {nb['status']} | {nb['seconds']:.0f} |")
    if record.get("prepare_s") is not None:
        rows.append(f"| (one-time setup: quanto extension) | ok | {record['prepare_s']:.0f} |")
    rows.append(f"| **total ({record['label']})** | | **{record['total_s']:.0f}** |")
    m = record["machine"]
    return ("\n".join(rows) + f"\n\n{m['cpus']} CPUs, torch {m['torch']} ({m['torch_threads']} threads); load average "
            f"before {record.get('load_before', [])}, after {record.get('load_after', [])}.\n")


def run(out: Path, names: list[str] | None, ci: bool) -> dict:
    """Run the demo's sequence and time it."""
    from lab.notebooks import notebook_paths, run_demo

    before, start = _load(), time.perf_counter()
    _, index = run_demo(out / "demo", notebook_paths(names), env=CI_PARAMETERS if ci else {"LAB_MODEL": "tiny"})
    total = time.perf_counter() - start
    data = json.loads(index["json"].read_text())
    prepare = data.get("prepare", {}).get("quanto_extension_s")
    return {"label": "CI parameters" if ci else "demo defaults", "total_s": round(total, 1),
            "prepare_s": prepare if isinstance(prepare, float) else None,
            "notebooks": [{"notebook": n["notebook"], "status": n["status"], "seconds": n["seconds"]}
                          for n in data["notebooks"]],
            "load_before": before, "load_after": _load(), "machine": machine(),
            "parameters": CI_PARAMETERS if ci else {}}


def from_index(path: Path, wall_s: float | None, label: str) -> dict:
    """Format a finished demo's ``index.json`` (per-notebook seconds) with an external wall time."""
    data = json.loads(path.read_text())
    prepare = data.get("prepare", {}).get("quanto_extension_s")
    return {"label": label, "total_s": wall_s if wall_s is not None else data.get("total_s"),
            "prepare_s": prepare if isinstance(prepare, float) else None,
            "notebooks": [{"notebook": n["notebook"], "status": n["status"], "seconds": n["seconds"]}
                          for n in data["notebooks"]],
            "load_after": _load(), "machine": machine(), "demo_total_s": data.get("total_s")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-notebooks")
    parser.add_argument("--ci", action="store_true", help="CI's parameters (LAB_STEPS=8 LAB_REPEATS=1 LAB_COMPILE=0)")
    parser.add_argument("--notebooks", nargs="*", default=None, help="only notebooks whose name starts so")
    parser.add_argument("--from-index", type=Path, default=None, help="a finished demo's index.json to format")
    parser.add_argument("--wall-s", type=float, default=None, help="with --from-index: the measured wall time")
    parser.add_argument("--label", default="lab demo", help="with --from-index: what was timed")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = (from_index(args.from_index, args.wall_s, args.label) if args.from_index
              else run(out, args.notebooks, args.ci))
    (out / "notebooks.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    text = to_markdown(record)
    (out / "notebooks.md").write_text(text, encoding="utf-8")
    print(text)
    return 0 if all(n["status"] == "ok" for n in record["notebooks"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
