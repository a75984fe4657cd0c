"""Command line: ``python -m lab <command>``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ._checks import (MAX_SEED, MAX_SIZE, MAX_STEPS, LabError, bounded_int, check_guidance, check_seed, check_size,
                      check_steps, choose, finite_number, output_dir, positive_int, writable_dir)
from .paths import run_lock

DEFAULT_MODEL = "tiny"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every command stops through the same clean-up (exit 143)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <command>: <what is wrong and what is allowed>``, exit 2."""

    def error(self, message: str):  # argparse calls this for every bad argument
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def _typed(check, kind: str):
    """An argparse type that parses ``kind`` and applies ``check`` (a validator from ``_checks``)."""

    def parse(value: str):
        try:
            number = float(value) if kind == "number" else int(value, 10)
            return check(number)
        except (ValueError, LabError) as err:
            text = str(err).split(", got")[0] if isinstance(err, LabError) else f"must be {kind_text[kind]}"
            raise argparse.ArgumentTypeError(f"{text}, got {value!r}") from None

    kind_text = {"number": "a number", "int": "an integer"}
    parse.__name__ = kind  # argparse names the type in some messages
    return parse


_steps = _typed(check_steps, "int")
_size = _typed(check_size, "int")
_seed = _typed(check_seed, "int")
_guidance = _typed(check_guidance, "number")
_seeds = _typed(lambda v: bounded_int("seeds", v, 1, 10_000), "int")
_budget = _typed(lambda v: finite_number("time budget", v, minimum=1e-3), "number")
_memory_budget = _typed(lambda v: finite_number("memory budget", v, minimum=1), "number")
_ssim_min = _typed(lambda v: finite_number("ssim-min", v, minimum=-1, maximum=1), "number")
_psnr_min = _typed(lambda v: finite_number("psnr-min", v, minimum=0, maximum=200), "number")


def _positive(value: str) -> int:
    try:
        return positive_int("value", int(value))
    except (ValueError, LabError):
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value!r}") from None


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {value!r}") from None


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {value!r}")
    return seconds


def _non_negative(value: str) -> int:
    try:
        return positive_int("value", int(value), minimum=0)
    except (ValueError, LabError):
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value!r}") from None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .env import DEVICES, DTYPES

    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="embedded name (tiny, sd15-arch, ...), local folder or hub id")
    p.add_argument("--dtype", default="fp32", help=f"one of {', '.join(DTYPES)}")
    p.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICES)} (or cuda:N)")
    p.add_argument("--scheduler", default=None, help="scheduler name (see `python -m lab models`)")


def _add_case_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", default=None,
                   help="shipped prompt set name or a JSON file (default: shapes for the models trained on them, "
                   "tiny and tiny-flux; seed002 otherwise)")
    p.add_argument("--prompt", default=None, help="a single prompt instead of the prompt set")
    p.add_argument("--steps", type=_steps, default=None, help=f"override every case's steps (1 to {MAX_STEPS})")
    p.add_argument("--guidance", type=_guidance, default=None, help="override every case's guidance (0 to 100)")
    p.add_argument("--size", type=_size, default=None,
                   help=f"square image size, a multiple of 8 up to {MAX_SIZE} (default: model's own)")
    p.add_argument("--seed", type=_seed, default=None, help=f"override every case's seed (0 to {MAX_SEED})")
    p.add_argument("--cases", type=_positive, default=None, help="use only the first N cases")


def _validate_model_args(args: argparse.Namespace) -> None:
    """Model, dtype, device (available here) and scheduler: checked before anything is written or loaded."""
    from .env import DTYPES, resolve_device
    from .models import check_model
    from .schedulers import SCHEDULERS

    if not args.model.strip():
        raise LabError("--model must not be empty; pass an embedded name (see `python -m lab models`), "
                       "a local folder or a hub id")
    check_model(args.model)  # a missing folder or a malformed model_index.json: refused before --out exists
    choose("dtype", args.dtype, DTYPES)
    resolve_device(args.device)  # unknown names and devices missing here (cuda without CUDA) stop now
    if args.scheduler is not None:
        choose("scheduler", args.scheduler, SCHEDULERS)


def _cases(args: argparse.Namespace):
    from .cases import Case, load_prompts

    if args.prompt is not None and not args.prompt.strip():
        raise LabError("--prompt must be a non-empty prompt; leave it out to use the prompt set (--prompts)")
    from .cases import default_prompts

    prompts = args.prompts if args.prompts is not None else default_prompts(args.model)
    if args.prompt is not None:
        try:
            cases = [Case(prompt=args.prompt)]
        except LabError as err:  # NUL, argv bytes that are not UTF-8, too long: before any model loads
            raise LabError(f"--prompt: {str(err).split(': ', 1)[-1]}") from None
    else:
        cases = load_prompts(prompts)
    cases = cases[: args.cases] if args.cases else cases
    cases = [
        c.with_overrides(steps=args.steps, guidance=args.guidance, height=args.size, width=args.size, seed=args.seed)
        for c in cases
    ]
    from .memory import check_fits

    # a size this machine cannot hold is refused now; a large one says why its first call is long
    check_fits(args.model, [(c.height, c.width) for c in cases], args.dtype,
               echo=lambda line: print(line, file=sys.stderr))
    return cases


def cmd_bench(args: argparse.Namespace) -> int:
    _validate_model_args(args)
    cases = _cases(args)
    from .benchmarking import BenchmarkInterrupted, benchmark
    from .prepare import load_pipeline
    from .results import atomic_write_text

    # locked: a second bench into this --out fails at once; removed again if the model fails to load
    with output_dir(args.out) as out, run_lock(out):
        pipe = load_pipeline(args.model, dtype=args.dtype, device=args.device, scheduler=args.scheduler)
        try:
            result = benchmark(pipe, cases, warmup=args.warmup, repeats=args.repeats, image_dir=out / "images",
                               progress=not args.quiet)
        except BenchmarkInterrupted as stop:  # Ctrl-C or SIGTERM: keep what finished, recorded
            if not stop.result.cases:
                raise type(stop.signal)("before any case finished; nothing was recorded") from None
            path = stop.result.save(out / "results.json")
            atomic_write_text(out / "results.md", stop.result.to_markdown() + "\n")
            raise type(stop.signal)(f"{len(stop.result.cases)} of {len(cases)} cases finished, recorded in "
                                    f"{path}") from None
        path = result.save(out / "results.json")
        atomic_write_text(out / "results.md", result.to_markdown() + "\n")
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
    with output_dir(args.out) as out, run_lock(out):  # removed again if the model fails to load
        try:
            return _write_profile_artifacts(args, case, out, with_diagnosis)
        except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: say what is there (each file is whole: atomic)
            kept = ", ".join(sorted(p.name for p in out.iterdir() if not p.name.startswith("."))) or "none"
            raise type(getattr(stop, "signal", stop))(f"artifacts written so far in {out}: {kept}") from None


def _write_profile_artifacts(args: argparse.Namespace, case, out: Path, with_diagnosis: bool) -> int:
    from .diagnosis import Thresholds
    from .workflows import diagnose_run

    run = diagnose_run(args.model, case, out=out, dtype=args.dtype, device=args.device, scheduler=args.scheduler,
                       repeats=args.repeats, record_steps=args.record_steps, with_stack=args.with_stack,
                       memory_snapshot=args.memory_snapshot, thresholds=Thresholds(time_budget_s=args.time_budget),
                       diagnosis=with_diagnosis, progress=not args.quiet)
    prof = run.profile
    print(prof.ops(top=15).to_markdown())
    if prof.has_kernels:
        print("\n" + prof.kernels(top=15).to_markdown())
    print(f"\ntrace ({prof.trace_bytes / 1e6:.1f} MB, {prof.denoiser_steps} denoising steps): {run.artifacts['trace']}  "
          "-> open in ui.perfetto.dev")
    print(f"tensorboard --logdir {prof.tensorboard_dir}")
    if prof.memory_snapshot_bytes is not None:
        print(f"memory snapshot ({prof.memory_snapshot_bytes / 1e6:.1f} MB): {prof.memory_snapshot}")
    if with_diagnosis:
        print("\n" + run.flops.to_markdown() + "\n\n" + run.diagnosis.to_markdown())
    print(f"\nartifacts: {out.resolve()}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    return _profile_artifacts(args, with_diagnosis=False)


def cmd_diagnose(args: argparse.Namespace) -> int:
    return _profile_artifacts(args, with_diagnosis=True)


def _executor(args: argparse.Namespace):
    """The checked ``ExecutorConfig`` of ``lab compare``'s executor options."""
    from .executors import ExecutorConfig

    return ExecutorConfig(name=args.executor, workers=args.workers, timeout_s=args.timeout,
                          warm_cache=args.warm_cache, slurm_partition=args.slurm_partition,
                          slurm_gpus=args.slurm_gpus, slurm_time=args.slurm_time).check()


def cmd_compare(args: argparse.Namespace) -> int:
    from .recipes import parse

    executor = _executor(args)  # an unknown executor or a missing extra: refused before anything runs
    _validate_model_args(args)
    recipes = [r.strip() for r in args.recipes.split(",")]
    if not any(recipes):
        raise LabError("--recipes needs at least one recipe string (the first is the baseline)")
    if not all(recipes):
        raise LabError(f"--recipes {args.recipes!r} has an empty entry; separate recipe strings with single commas")
    repeated = sorted({r for r in recipes if recipes.count(r) > 1})
    if repeated:  # the API drops repeats with a warning; on the command line it is a typo worth stopping
        raise LabError(f"--recipes lists {', '.join(repr(r) for r in repeated)} more than once; "
                       "each recipe must be unique")
    for text in recipes:
        parse(text)  # unknown names and impossible combinations stop here, before any work
    cases = _cases(args)
    from .experiments import compare
    from .results import atomic_write_text

    # compare() checks the rest (repeated recipes, a run directory made with other settings, the lock)
    # before it writes anything; it creates --out itself and removes it if the model cannot load.
    cmp = compare(args.model, recipes, cases, seeds=tuple(range(args.seeds)), repeats=args.repeats,
                  warmup=args.warmup, out=args.out, dtype=args.dtype, device=args.device, progress=not args.quiet,
                  isolate=False if args.in_process else None, executor=executor, recheck=not args.no_recheck)
    out = Path(args.out)
    atomic_write_text(out / "comparison.md", cmp.to_markdown() + "\n")
    print(cmp.to_markdown())
    print(f"\nresults: {out / 'results.jsonl'}\nimages:  {out / 'images'}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from .env import RecipeEnv
    from .presets import PRIORITIES, preset, recommend
    from . import recipes
    from .denoiser import model_kind
    from .models import check_model
    from .recipes import catalog

    choose("priority", args.priority, PRIORITIES)  # checked before anything is printed
    model = check_model(args.model) if args.model else None
    env = RecipeEnv.detect(args.device)
    frame = catalog(env)
    if model is not None and (kind := model_kind(model)) is not None:  # why a recipe cannot fit this model
        frame["not_for_model"] = [(recipes.get(n).fits(kind) or "") if n in recipes.names() else ""
                                  for n in frame.index]
    print(frame.to_markdown())
    for tier in ("basic", "advanced", "expert"):
        print(f"\npreset {tier}: {preset(tier, env, model=model)}")
    print("\n" + str(recommend(env, args.priority, model=model)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .experiments import RESULTS, Comparison
    from .quality import QualityThresholds
    from .reporting import report

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise LabError(f"{str(run_dir)!r} is not a directory; pass a directory written by `python -m lab compare`")
    if not (run_dir / RESULTS).is_file():
        raise LabError(f"{str(run_dir)!r} is not a compare run directory (no {RESULTS}); "
                       "make one with `python -m lab compare ... --out DIR`")
    comparison = Comparison.load(run_dir)
    if not any(r.status == "ok" for r in comparison.records):
        raise LabError(f"{str(run_dir / RESULTS)!r} holds no finished run to report on")
    out = writable_dir(args.out or run_dir)
    with run_lock(out):  # a second report (or a compare still writing) into this folder fails at once
        paths = report(comparison, out, recipe=args.recipe,
                       thresholds=QualityThresholds(ssim_min=args.ssim_min, psnr_min=args.psnr_min))
    print(f"report: {paths['markdown']}\n        {paths['html']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .env import resolve_device
    from .models import check_model
    from .notebooks import notebook_paths, run_demo

    if not args.model.strip():
        raise LabError("--model must not be empty")
    check_model(args.model)  # a missing folder is refused before any notebook starts
    resolve_device(args.device)
    if args.notebooks is not None and not all(n.strip() for n in args.notebooks):
        raise LabError("--notebooks needs non-empty names (e.g. 01); leave it out to run every notebook")
    paths = notebook_paths(args.notebooks)
    if args.notebooks is not None and not paths:
        available = [p.stem for p in notebook_paths()]
        raise LabError(f"no notebook starts with {' or '.join(repr(n) for n in args.notebooks) or 'nothing'}; "
                       f"available: {', '.join(available) or 'none'} (pass a prefix such as "
                       f"{available[0][:2] if available else '01'!r})")
    if not paths:
        raise LabError("no numbered notebooks (NN_name.ipynb) in notebooks/: is this a full clone?")
    env = {"LAB_MODEL": args.model, "LAB_DEVICE": args.device}
    runs, _ = run_demo(args.out, paths, env=env, timeout=args.timeout)
    return 1 if any(r.error for r in runs) else 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training import FluxTrainConfig, TrainConfig, check_out, train, train_flux

    config_cls, run = (FluxTrainConfig, train_flux) if args.model == "tiny-flux" else (TrainConfig, train)
    config = config_cls.smoke() if args.smoke else config_cls()
    if args.seed is not None:
        config.seed = args.seed
    out = check_out(args.out)  # a file or a folder of other files: refused before any checkpoint is written
    work = writable_dir(args.work or out.with_name(out.name + ".work"))
    with run_lock(work):  # two trainings into one checkpoint folder would corrupt each other's checkpoints
        report = run(out, config, work=work, progress=not args.quiet)
    print(f"trained in {sum(report.seconds.values()) / 60:.1f} min; final losses {report.final_loss}; -> {args.out}")
    return 0


def _batches(value: str) -> list[int]:
    try:
        sizes = [positive_int("batch", int(v)) for v in value.split(",")]
    except (ValueError, LabError):
        raise argparse.ArgumentTypeError(f"must be comma-separated integers >= 1, e.g. 1,2,4, got {value!r}") from None
    return sizes


def cmd_throughput(args: argparse.Namespace) -> int:
    _validate_model_args(args)
    cases = _cases(args)
    from .plots import plot_throughput
    from .results import atomic_write_text
    from .throughput import batch_sweep

    with output_dir(args.out) as out, run_lock(out):
        result = batch_sweep(args.model, args.batches, images_per_prompt=args.images_per_prompt,
                             recipe=args.recipe or "", device=args.device, dtype=args.dtype, case=cases[0],
                             prompts=[c.prompt for c in cases], warmup=args.warmup, repeats=args.repeats,
                             progress=not args.quiet)
        path = result.save(out / "throughput.json")
        text = result.to_markdown()
        if args.memory_budget is not None:
            fit = result.largest_fit(args.memory_budget)
            text += (f"\n\nlargest batch within {args.memory_budget:g} MiB: {fit.images} images per call"
                     f"{' (estimated)' if fit.estimated else ''}; {fit.reason}")
        atomic_write_text(out / "throughput.md", text + "\n")
        if result.ok():
            plot_throughput(result, path=out / "throughput.png")
    print(text)
    print(f"\nresults: {path}")
    failed = [p for p in result.points if p.status == "error"]
    for p in failed:
        print(f"FAILED batch {p.prompts}x{p.images_per_prompt}: {p.error}", file=sys.stderr)
    return 1 if failed else 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import EMBEDDED
    from .schedulers import scheduler_names

    for spec in EMBEDDED.values():
        print(f"{spec.name:10s} {spec.description} [configs: {spec.reference}]")
    print(f"\nschedulers: {', '.join(scheduler_names())}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m lab",
        description="diffusion-lab: profile, benchmark and optimize diffusers pipelines (offline by default).",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"diffusion-lab {__version__}")
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
        p.add_argument("--record-steps", type=_positive, default=2, help="denoising steps kept in the trace")
        p.add_argument("--repeats", type=_positive, default=3, help="timed calls for the stage breakdown")
        p.add_argument("--with-stack", action="store_true", help="record Python stacks (memory timeline)")
        p.add_argument("--memory-snapshot", action="store_true",
                       help="CUDA: also write the allocator history (memory_snapshot.json, bounded, size reported)")
        p.add_argument("--time-budget", type=_budget, default=10.0, help="seconds per image before it is 'slow' (> 0)")
        p.add_argument("--out", default=f"runs/{name}", help="output directory")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(func=func)

    cmp = sub.add_parser("compare", help="compare recipes against a baseline (the first); resumable")
    _add_model_args(cmp)
    _add_case_args(cmp)
    cmp.add_argument("--recipes", required=True, help="comma-separated recipe strings, e.g. fp32,bf16+sdpa")
    cmp.add_argument("--seeds", type=_seeds, default=1, help="seeds 0..N-1 per case (N from 1 to 10000)")
    cmp.add_argument("--warmup", type=_non_negative, default=1, help="untimed calls per run")
    cmp.add_argument("--repeats", type=_positive, default=3, help="timed calls per run")
    cmp.add_argument("--out", default="runs/compare", help="output directory (re-use it to resume)")
    cmp.add_argument("--quiet", action="store_true", help="no progress bars")
    cmp.add_argument("--no-recheck", action="store_true",
                     help="do not re-measure the baseline after the candidates (the check for drift)")
    ex = cmp.add_argument_group("where the runs execute (each recipe in a fresh worker process)")
    ex.add_argument("--executor", default="local", help="local (this machine), submitit (SLURM) or ray")
    ex.add_argument("--workers", type=_int, default=None,
                    help="local: parallel workers (default: one per visible GPU, one on a CPU machine)")
    ex.add_argument("--timeout", type=_seconds, default=None, help="seconds a run may take before it is killed")
    ex.add_argument("--warm-cache", default=None, metavar="DIR",
                    help="share one inductor/Triton cache folder between workers (default: a cold one each)")
    ex.add_argument("--in-process", action="store_true",
                    help="run every recipe in this process instead (quicker; figures may depend on run order)")
    ex.add_argument("--slurm-partition", default=None, help="submitit: SLURM partition")
    ex.add_argument("--slurm-gpus", type=_int, default=None, help="submitit: GPUs per job")
    ex.add_argument("--slurm-time", type=_int, default=None, help="submitit: minutes per job")
    cmp.set_defaults(func=cmd_compare)

    thr = sub.add_parser("throughput", help="batch sweep: images/s, latency per call and peak memory per batch size")
    _add_model_args(thr)
    _add_case_args(thr)
    thr.add_argument("--recipe", default=None, help="recipe string applied once before the sweep (e.g. bf16+sdpa)")
    thr.add_argument("--batches", type=_batches, default=[1, 2, 4], help="prompts per call, e.g. 1,2,4 (default)")
    thr.add_argument("--images-per-prompt", type=_batches, default=[1],
                     help="num_images_per_prompt values, e.g. 1,2 (default 1)")
    thr.add_argument("--memory-budget", type=_memory_budget, default=None, metavar="MIB",
                     help="also report the largest batch whose peak memory stays within this many MiB")
    thr.add_argument("--warmup", type=_non_negative, default=1, help="untimed calls per batch size")
    thr.add_argument("--repeats", type=_positive, default=3, help="timed calls per batch size (>= 1)")
    thr.add_argument("--out", default="runs/throughput", help="output directory")
    thr.add_argument("--quiet", action="store_true", help="no progress bars")
    thr.set_defaults(func=cmd_throughput)

    rec = sub.add_parser("recipes", help="list the recipe catalog, the presets and a recommendation")
    rec.add_argument("--device", default="auto")
    rec.add_argument("--priority", default="balance", help="quality, balance, speed or throughput")
    rec.add_argument("--model", default=None, help="also say which recipes cannot fit this model, and fit the "
                     "presets and the recommendation to it (e.g. tiny-flux)")
    rec.set_defaults(func=cmd_recipes)

    rep = sub.add_parser("report", help="before/after report (Markdown + HTML) of a compare run directory")
    rep.add_argument("run_dir", help="a directory written by `python -m lab compare`")
    rep.add_argument("--recipe", default=None, help="the 'after' recipe (default: fastest passing the gate)")
    rep.add_argument("--ssim-min", type=_ssim_min, default=0.85, help="quality gate: SSIM must exceed this (-1 to 1)")
    rep.add_argument("--psnr-min", type=_psnr_min, default=25.0,
                     help="quality gate: PSNR (dB) must exceed this (0 to 200)")
    rep.add_argument("--out", default=None, help="where to write report.md/html (default: RUN_DIR)")
    rep.set_defaults(func=cmd_report)

    demo = sub.add_parser("demo", help="execute the notebooks headless; artifacts under --out")
    demo.add_argument("--out", default="runs/demo", help="output directory")
    demo.add_argument("--model", default=DEFAULT_MODEL, help="model every notebook uses (LAB_MODEL)")
    demo.add_argument("--device", default="auto", help="device every notebook uses (LAB_DEVICE)")
    demo.add_argument("--notebooks", nargs="*", default=None, help="only notebooks whose name starts so (e.g. 01)")
    demo.add_argument("--timeout", type=_positive, default=None, help="seconds per cell (default: no limit)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="train the embedded tiny or tiny-flux model on shape scenes (CPU, resumable)")
    train.add_argument("--model", choices=("tiny", "tiny-flux"), default="tiny",
                       help="tiny: UNet (SD 1.5 layout); tiny-flux: FLUX.1 transformer on tiny's VAE (default tiny)")
    train.add_argument("--out", default="runs/tiny-trained",
                       help="diffusers folder to write (data/models/tiny and data/models/tiny-flux ship)")
    train.add_argument("--work", default=None, help="checkpoint folder (default: OUT.work); re-run to resume")
    train.add_argument("--seed", type=_seed, default=None, help="training seed (default 0)")
    train.add_argument("--smoke", action="store_true", help="a few iterations of a toy config, to check the code")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_train)

    models = sub.add_parser("models", help="list embedded models and scheduler names")
    models.set_defaults(func=cmd_models)
    return parser


def _os_error(err: OSError) -> str:
    """One line for a failed read or write: what failed, where, and what to do."""
    import errno

    where = f" ({err.filename})" if err.filename else ""
    hint = {errno.ENOSPC: "free some space and run the same command again: finished runs are kept",
            errno.EDQUOT: "free some space and run the same command again: finished runs are kept",
            errno.EROFS: "the file system is read-only; pass a writable --out",
            errno.EACCES: "permission denied; pass a folder you can write to",
            errno.EPERM: "permission denied; pass a folder you can write to"}.get(err.errno, "")
    return f"{err.strerror or err}{where}" + (f"; {hint}" if hint else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; every expected failure is one ``error: ...`` line on stderr and a non-zero exit."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a bad argument (2, already reported in one line)
        return exit_.code if isinstance(exit_.code, int) else 2
    if getattr(args, "quiet", False):
        os.environ.setdefault("TQDM_DISABLE", "1")
    import signal
    import threading

    def terminate(signum, frame):
        raise Terminated("terminated")

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if main_thread else None  # stop like Ctrl-C, cleanly
    try:
        return args.func(args)
    except ValueError as err:  # LabError, and bad values found deeper (UnicodeDecodeError, JSONDecodeError)
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only remount, a permission: the run can be resumed
        print(f"error: {_os_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM as Terminated: what was kept, in one line
        what = "terminated" if isinstance(stop, Terminated) else "interrupted"
        detail = str(stop) if str(stop) not in ("", what) else ""
        print(f"{what}" + (f": {detail}" if detail else ""), file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
