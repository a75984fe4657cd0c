"""Performance ladder: cumulative recipes on a realistic architecture, against the hardware limit.

Usage:
    python benchmarks/ladder.py                       # CPU: sd15-arch, 256², 4 steps
    python benchmarks/ladder.py --model sd15-arch --size 512 --steps 30 --device cuda   # GPU
    python benchmarks/ladder.py --model sdxl-arch --size 1024 --steps 30 --device cuda
    python benchmarks/ladder.py --smoke               # CI: tiny, 1 repeat, 2 steps, regional compile

Each rung adds one technique to the previous rung: fp32 → bf16 (fp16 on CUDA) → SDPA → channels-last →
compile → fused QKV → quanto int8 weights → int8 weights + activations → fewer steps with a better
scheduler; then one more rung, the same fewer steps on the fastest rung before it (the cumulative last
rung inherits every rung that lost time, quanto's above all). On CPU the compile rung freezes the weights
into the graph (`compile-unet-frozen`: inductor prepacks them for oneDNN; see
benchmarks/compile_freezing.py). Per rung: latency per image (median after warm-up), ratio to fp32, UNet
ms per step, UNet achieved TFLOP/s and utilisation against the measured matmul peak in the rung's dtype,
peak memory, SSIM against the fp32 image. A rung that fails is recorded and the ladder goes on
(resumable with --out). Writes ladder.json and ladder.md beside the compare run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lab  # noqa: E402


def rungs(precision: str, steps: int, compile_recipe: str = "compile-unet") -> list[tuple[str, str]]:
    """(label, cumulative recipe string) per rung."""
    parts: list[str] = []
    out = [("fp32", "fp32")]
    for label, add in ((precision, precision), ("+ SDPA", "sdpa"), ("+ channels-last", "channels-last"),
                       ("+ compile", compile_recipe), ("+ fused QKV", "fused-qkv"),
                       ("+ quanto int8 weights", "quanto-unet-int8w")):
        parts.append(add)
        out.append((label, "+".join(parts)))
    w8a8 = [p if p != "quanto-unet-int8w" else "quanto-unet-int8w-int8a" for p in parts]
    out.append(("int8 weights + activations", "+".join(w8a8)))
    out.append((f"+ DPM-Solver++ Karras, {fewer(steps)} steps", fewer_steps("+".join(parts), steps)))
    return out


def fewer(steps: int) -> int:
    """The step count of the ladder's fewer-steps rungs."""
    return max(1, steps // 2)


def fewer_steps(recipe: str, steps: int) -> str:
    """``recipe`` with the ladder's fewer-steps rung added."""
    return f"{recipe}+dpmpp-2m-karras+steps-{fewer(steps)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd15-arch")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny, 1 repeat, 2 steps, regional compile (CI: five cold whole-UNet compiles took 6 min)")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.size, args.steps, args.repeats = "tiny", 64, 2, 1
    out = Path(args.out or ROOT / "runs" / f"ladder-{Path(args.model).name}-{args.size}")
    env = lab.RecipeEnv.detect(args.device)
    precision = "fp16" if env.cuda else "bf16"
    compile_recipe = "compile-unet-regional" if args.smoke else "compile-unet" if env.cuda else "compile-unet-frozen"
    ladder = rungs(precision, args.steps, compile_recipe)
    case = lab.Case("a photo of an astronaut riding a horse on mars", steps=args.steps, height=args.size,
                    width=args.size, name="astronaut")
    cmp = lab.compare(args.model, [recipe for _, recipe in ladder], [case], repeats=args.repeats, warmup=1,
                      out=out, device=env.device)
    timed = [(cmp.record(recipe, "astronaut"), label) for label, recipe in ladder[:-2]]
    fastest = min(((r, label) for r, label in timed if r.status == "ok"), key=lambda pair: pair[0].latency.median,
                  default=None)
    if fastest and fewer_steps(fastest[0].recipe, args.steps) != ladder[-1][1]:  # else it is the cumulative rung
        ladder.append((f"{fastest[1]} (fastest rung) + DPM-Solver++ Karras, {fewer(args.steps)} steps",
                       fewer_steps(fastest[0].recipe, args.steps)))
        # the runner resumes from results.jsonl: only the new rung runs
        cmp = lab.compare(args.model, [recipe for _, recipe in ladder], [case], repeats=args.repeats, warmup=1,
                          out=out, device=env.device)

    pipe = lab.load_pipeline(args.model, device="cpu")  # only for the UNet's shape: FLOPs are counted on meta
    batch = 2 if case.guidance > 1 else 1
    step_flops = lab.flops.unet_step_flops(pipe, args.size, args.size, batch)["total"]
    del pipe
    peaks = {dt: lab.measure_peak(env.device, dt) for dt in ("fp32", precision)}
    frame = cmp.to_frame()
    rows = []
    for label, recipe in ladder:
        rec = cmp.record(recipe, "astronaut")
        row = {"rung": label, "recipe": recipe, "status": rec.status, "error": rec.error}
        if rec.status == "ok":
            peak = peaks["fp32" if recipe == "fp32" else precision]
            unet_s = rec.stages.unet_per_step
            achieved = step_flops / unet_s
            row.update(latency_s=rec.latency.median, ratio=frame.loc[recipe, "speedup"], first_call_s=rec.first_call_s,
                       unet_ms_per_step=unet_s * 1e3, unet_tflops=achieved / 1e12,
                       utilisation_pct=100 * achieved / peak.flops_per_s, peak_dtype=peak.dtype,
                       peak_mem_mb=frame.loc[recipe, "peak_mem_mb"], ssim=rec.ssim)
        rows.append(row)
    env_info = json.loads((out / "environment.json").read_text())
    result = {"model": args.model, "size": args.size, "steps": args.steps, "repeats": args.repeats,
              "batch": batch, "unet_step_flops": step_flops,
              "peaks": {k: v.to_dict() for k, v in peaks.items()}, "rungs": rows, "env": env_info,
              "command": " ".join(["python", "benchmarks/ladder.py", *sys.argv[1:]])}
    (out / "ladder.json").write_text(json.dumps(result, indent=2, default=str))

    lines = ["| rung | latency s | × fp32 | UNet ms/step | UNet TFLOP/s | utilisation | peak MB | SSIM |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['rung']} | {r['status']}: {(r['error'] or '')[:80]} | | | | | | |")
            continue
        ssim = "–" if r["ssim"] is None or math.isnan(r["ssim"]) else f"{r['ssim']:.3f}"
        lines.append(f"| {r['rung']} | {r['latency_s']:.2f} | {r['ratio']:.2f} | {r['unet_ms_per_step']:.0f} | "
                     f"{r['unet_tflops']:.3f} | {r['utilisation_pct']:.1f}% of {r['peak_dtype']} | "
                     f"{r['peak_mem_mb']:.0f} | {ssim} |")
    peak_text = ", ".join(f"{k} {v.flops_per_s / 1e12:.2f} TFLOP/s" for k, v in peaks.items())
    lines += ["", f"{args.model}, {args.size}², {args.steps} steps, batch {batch} (CFG), median of {args.repeats} "
              f"after 1 warm-up; UNet {step_flops / 1e12:.3f} TFLOP per step; measured peaks: {peak_text}; "
              f"{env_info['device_name']}, torch {env_info['packages']['torch']}, commit {env_info['git_commit']}"]
    (out / "ladder.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
