"""Command line: ``python -m lab <command>``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ._checks import LabError, choose, positive_int, writable_dir


def _positive(value: str) -> int:
    try:
        return positive_int("value", int(value))
    except (ValueError, LabError):
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value!r}") from None


def _non_negative(value: str) -> int:
    try:
        return positive_int("value", int(value), minimum=0)
    except (ValueError, LabError):
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value!r}") from None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .env import DEVICES, DTYPES

    p.add_argument("--model", default="tiny", help="embedded name (tiny, sd15-arch, ...), local folder or hub id")
    p.add_argument("--dtype", default="fp32", help=f"one of {', '.join(DTYPES)}")
    p.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICES)} (or cuda:N)")
    p.add_argument("--scheduler", default=None, help="scheduler name (see `python -m lab models`)")


def _add_case_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", default="seed002", help="shipped prompt set name or a JSON file")
    p.add_argument("--prompt", default=None, help="a single prompt instead of the prompt set")
    p.add_argument("--steps", type=_positive, default=None, help="override every case's steps")
    p.add_argument("--guidance", type=float, default=None, help="override every case's guidance")
    p.add_argument("--size", type=_positive, default=None, help="square image size (default: model's own)")
    p.add_argument("--seed", type=_non_negative, default=None, help="override every case's seed")
    p.add_argument("--cases", type=_positive, default=None, help="use only the first N cases")


def _validate_model_args(args: argparse.Namespace) -> None:
    from .env import DEVICES, DTYPES
    from .schedulers import SCHEDULERS

    choose("dtype", args.dtype, DTYPES)
    choose("device", args.device.split(":", 1)[0], DEVICES)
    if args.scheduler is not None:
        choose("scheduler", args.scheduler, SCHEDULERS)


def _cases(args: argparse.Namespace):
    from .cases import Case, load_prompts

    cases = [Case(prompt=args.prompt)] if args.prompt else load_prompts(args.prompts)
    cases = cases[: args.cases] if args.cases else cases
    return [
        c.with_overrides(steps=args.steps, guidance=args.guidance, height=args.size, width=args.size, seed=args.seed)
        for c in cases
    ]


def cmd_bench(args: argparse.Namespace) -> int:
    _validate_model_args(args)
    cases = _cases(args)
    out = writable_dir(args.out)
    from .benchmarking import benchmark
    from .prepare import load_pipeline

    pipe = load_pipeline(args.model, dtype=args.dtype, device=args.device, scheduler=args.scheduler)
    result = benchmark(
        pipe, cases, warmup=args.warmup, repeats=args.repeats, image_dir=out / "images", progress=not args.quiet
    )
    path = result.save(out / "results.json")
    (out / "results.md").write_text(result.to_markdown() + "\n", encoding="utf-8")
    print(result.to_markdown())
    print(f"\nresults: {path}\nimages:  {out / 'images'}")
    for failed in result.failed:
        print(f"FAILED {failed.case.name}: {failed.error}", file=sys.stderr)
    return 1 if result.failed else 0


def _profile_artifacts(args: argparse.Namespace, with_diagnosis: bool) -> int:
    """Benchmark, profile, FLOPs and (optionally) diagnosis of the first case, all under --out."""
    _validate_model_args(args)
    if args.record_steps < 1:
        raise LabError(f"--record-steps must be >= 1, got {args.record_steps}")
    case = _cases(args)[0]
    if args.record_steps > case.steps:
        raise LabError(f"--record-steps {args.record_steps} is more than the case's {case.steps} steps")
    out = writable_dir(args.out)
    from . import plots
    from .benchmarking import benchmark
    from .diagnosis import Thresholds, diagnose
    from .flops import flops_report
    from .prepare import load_pipeline
    from .monitor import ResourceMonitor
    from .profiling import profile

    pipe = load_pipeline(args.model, dtype=args.dtype, device=args.device, scheduler=args.scheduler)
    monitor = ResourceMonitor(interval=0.05)
    bench = benchmark(pipe, case, warmup=1, repeats=args.repeats, progress=not args.quiet, monitor=monitor)
    bench.save(out / "benchmark.json")
    plots.plot_stages(bench, path=out / "stages.png")
    plots.plot_resources(monitor, path=out / "resources.png")
    prof = profile(pipe, case, record_steps=args.record_steps, out_dir=out, with_stack=args.with_stack)
    prof.save(out / "profile.json")
    trace = prof.export_chrome_trace(out / "trace.json.gz")
    print(prof.ops(top=15).drop(columns=["input_shapes"]).round(1).to_markdown())
    print(f"\ntrace ({prof.trace_bytes / 1e6:.1f} MB, {prof.record_steps} steps): {trace}  -> open in ui.perfetto.dev")
    print(f"tensorboard --logdir {prof.tensorboard_dir}")
    if not with_diagnosis:
        return 0
    report = flops_report(pipe, case, stage_seconds=bench.cases[0].stages.seconds())
    report.save(out / "flops.json")
    plots.plot_utilisation(report, path=out / "utilisation.png")
    diagnosis = diagnose(bench, profile=prof, flops=report,
                         thresholds=Thresholds(time_budget_s=args.time_budget))
    diagnosis.save(out / "diagnosis.json")
    (out / "diagnosis.md").write_text(diagnosis.to_markdown() + "\n", encoding="utf-8")
    print("\n" + report.to_markdown() + "\n\n" + diagnosis.to_markdown())
    print(f"\nartifacts: {out.resolve()}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    return _profile_artifacts(args, with_diagnosis=False)


def cmd_diagnose(args: argparse.Namespace) -> int:
    return _profile_artifacts(args, with_diagnosis=True)


def cmd_compare(args: argparse.Namespace) -> int:
    from .recipes import parse

    _validate_model_args(args)
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    if not recipes:
        raise LabError("--recipes needs at least one recipe string (the first is the baseline)")
    for text in recipes:
        parse(text)  # unknown names and impossible combinations stop here, before any work
    cases = _cases(args)
    out = writable_dir(args.out)
    from .experiments import compare

    cmp = compare(args.model, recipes, cases, seeds=tuple(range(args.seeds)), repeats=args.repeats,
                  warmup=args.warmup, out=out, dtype=args.dtype, device=args.device, progress=not args.quiet)
    (out / "comparison.md").write_text(cmp.to_markdown() + "\n", encoding="utf-8")
    print(cmp.to_markdown())
    print(f"\nresults: {out / 'results.jsonl'}\nimages:  {out / 'images'}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from .presets import preset, recommend
    from .env import RecipeEnv
    from .recipes import catalog

    env = RecipeEnv.detect(args.device)
    print(catalog(env).to_markdown())
    for tier in ("basic", "advanced", "expert"):
        print(f"\npreset {tier}: {preset(tier, env)}")
    print("\n" + str(recommend(env, args.priority)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .experiments import RESULTS, Comparison
    from .quality import QualityThresholds
    from .reporting import report

    run_dir = Path(args.run_dir)
    if not (run_dir / RESULTS).is_file():
        raise LabError(f"{str(run_dir)!r} is not a compare run directory (no {RESULTS}); "
                       "make one with `python -m lab compare ... --out DIR`")
    comparison = Comparison.load(run_dir)
    paths = report(comparison, args.out or run_dir, recipe=args.recipe,
                   thresholds=QualityThresholds(ssim_min=args.ssim_min, psnr_min=args.psnr_min))
    print(f"report: {paths['markdown']}\n        {paths['html']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .notebooks import notebook_paths, run_demo

    out = writable_dir(args.out)
    paths = notebook_paths(args.notebooks)
    if not paths:
        print("no notebooks yet: running the benchmark on the embedded model instead")
        bench = build_parser().parse_args(["bench", "--model", args.model, "--steps", "20", "--repeats", "3",
                                           "--out", str(out / "bench")] + (["--quiet"] if args.quiet else []))
        return cmd_bench(bench)
    env = {"LAB_MODEL": args.model, "LAB_DEVICE": args.device}
    runs, _ = run_demo(out, paths, env=env, timeout=args.timeout)
    return 1 if any(r.error for r in runs) else 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training import TrainConfig, train

    config = TrainConfig.smoke() if args.smoke else TrainConfig()
    if args.seed is not None:
        config.seed = args.seed
    report = train(args.out, config, work=args.work, progress=not args.quiet)
    print(f"trained in {sum(report.seconds.values()) / 60:.1f} min; final losses {report.final_loss}; -> {args.out}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import EMBEDDED
    from .schedulers import scheduler_names

    for spec in EMBEDDED.values():
        print(f"{spec.name:10s} {spec.description} [configs: {spec.reference}]")
    print(f"\nschedulers: {', '.join(scheduler_names())}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lab",
        description="diffusion-lab: profile, benchmark and optimize diffusers pipelines (offline by default).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = sub.add_parser("bench", help="benchmark a pipeline over a prompt set; writes results.json and images")
    _add_model_args(bench)
    _add_case_args(bench)
    bench.add_argument("--warmup", type=_non_negative, default=1, help="untimed calls per case")
    bench.add_argument("--repeats", type=_positive, default=5, help="timed calls per case (>= 1)")
    bench.add_argument("--out", default="runs/bench", help="output directory")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.set_defaults(func=cmd_bench)

    for name, func, text in (
        ("profile", cmd_profile, "profile one case: op tables, Chrome/Perfetto trace, TensorBoard logdir"),
        ("diagnose", cmd_diagnose, "benchmark + profile + FLOPs of one case, then bottleneck findings"),
    ):
        p = sub.add_parser(name, help=text)
        _add_model_args(p)
        _add_case_args(p)
        p.add_argument("--record-steps", type=int, default=2, help="denoising steps kept in the trace")
        p.add_argument("--repeats", type=_positive, default=3, help="timed calls for the stage breakdown")
        p.add_argument("--with-stack", action="store_true", help="record Python stacks (memory timeline)")
        p.add_argument("--time-budget", type=float, default=10.0, help="seconds per image before it is 'slow'")
        p.add_argument("--out", default=f"runs/{name}", help="output directory")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(func=func)

    cmp = sub.add_parser("compare", help="compare recipes against a baseline (the first); resumable")
    _add_model_args(cmp)
    _add_case_args(cmp)
    cmp.add_argument("--recipes", required=True, help="comma-separated recipe strings, e.g. fp32,bf16+sdpa")
    cmp.add_argument("--seeds", type=_positive, default=1, help="seeds 0..N-1 per case")
    cmp.add_argument("--warmup", type=_non_negative, default=1, help="untimed calls per run")
    cmp.add_argument("--repeats", type=_positive, default=3, help="timed calls per run")
    cmp.add_argument("--out", default="runs/compare", help="output directory (re-use it to resume)")
    cmp.add_argument("--quiet", action="store_true", help="no progress bars")
    cmp.set_defaults(func=cmd_compare)

    rec = sub.add_parser("recipes", help="list the recipe catalog, the presets and a recommendation")
    rec.add_argument("--device", default="auto")
    rec.add_argument("--priority", default="balance", help="quality, balance or speed")
    rec.set_defaults(func=cmd_recipes)

    rep = sub.add_parser("report", help="before/after report (Markdown + HTML) of a compare run directory")
    rep.add_argument("run_dir", help="a directory written by `python -m lab compare`")
    rep.add_argument("--recipe", default=None, help="the 'after' recipe (default: fastest passing the gate)")
    rep.add_argument("--ssim-min", type=float, default=0.85, help="quality gate: SSIM must exceed this")
    rep.add_argument("--psnr-min", type=float, default=25.0, help="quality gate: PSNR (dB) must exceed this")
    rep.add_argument("--out", default=None, help="where to write report.md/html (default: RUN_DIR)")
    rep.set_defaults(func=cmd_report)

    demo = sub.add_parser("demo", help="execute the notebooks headless; artifacts under --out")
    demo.add_argument("--out", default="runs/demo", help="output directory")
    demo.add_argument("--model", default="tiny", help="model every notebook uses (LAB_MODEL)")
    demo.add_argument("--device", default="auto", help="device every notebook uses (LAB_DEVICE)")
    demo.add_argument("--notebooks", nargs="*", default=None, help="only notebooks whose name starts so (e.g. 01)")
    demo.add_argument("--timeout", type=_positive, default=None, help="seconds per cell (default: no limit)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="train the embedded tiny model on shape scenes (CPU, resumable)")
    train.add_argument("--out", default="runs/tiny-trained", help="diffusers folder to write (data/models/tiny ships)")
    train.add_argument("--work", default=None, help="checkpoint folder (default: OUT.work); re-run to resume")
    train.add_argument("--seed", type=_non_negative, default=None, help="training seed (default 0)")
    train.add_argument("--smoke", action="store_true", help="a few iterations of a toy config, to check the code")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_train)

    models = sub.add_parser("models", help="list embedded models and scheduler names")
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "quiet", False):
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        return args.func(args)
    except LabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
