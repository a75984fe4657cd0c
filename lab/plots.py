"""Matplotlib figures of lab results; computing stays in the other modules."""

from __future__ import annotations

import os
from pathlib import Path


def _figure(figsize=(7, 3.5), nrows: int = 1, ncols: int = 1):
    """A new figure: one axis, or a 2-D grid ``axes[row][col]`` when there are several."""
    import sys

    import matplotlib

    if not os.environ.get("MPLBACKEND") and "ipykernel" not in sys.modules:
        matplotlib.use("Agg")  # headless scripts and tests: never try to open a window
    import matplotlib.pyplot as plt

    single = nrows == ncols == 1
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, layout="constrained", squeeze=single)
    return fig, axes


def _save(fig, path: str | os.PathLike | None):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def plot_stages(result, *, path: str | os.PathLike | None = None):
    """Stacked bar per case: median seconds in text encoder, UNet, VAE decode and other."""
    fig, ax = _figure()
    cases = [c for c in result.cases if c.stages]
    names = [c.case.name for c in cases]
    bottom = [0.0] * len(cases)
    for stage in ("text_encoder", "unet", "vae_decode", "other"):
        values = [max(getattr(c.stages, stage), 0.0) for c in cases]
        ax.bar(names, values, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("seconds (median)")
    ax.set_title(f"Where the time goes: {result.model} ({result.dtype}, {result.device})")
    ax.legend(loc="upper right", fontsize="small")
    ax.tick_params(axis="x", labelrotation=20)
    return _save(fig, path)


def plot_resources(monitor, *, path: str | os.PathLike | None = None):
    """CPU % and RSS over time (GPU memory and utilisation too when sampled)."""
    frame = monitor.frame() if hasattr(monitor, "frame") else monitor
    gpu = "gpu_memory_mb" in frame
    fig, axes = _figure(figsize=(7, 5 if gpu else 3.5), nrows=2 if gpu else 1)
    ax = axes[0][0] if gpu else axes
    ax.plot(frame.index, frame["cpu_percent"], color="tab:blue", marker=".", label="CPU %")
    ax.set_ylabel("CPU % (100 = 1 core)")
    ax.set_xlabel("seconds")
    twin = ax.twinx()
    twin.plot(frame.index, frame["rss_mb"], color="tab:orange", marker=".", label="RSS MB")
    twin.set_ylabel("RSS (MB)")
    ax.set_title("Resources during the run")
    ax.legend(loc="upper left", fontsize="small")
    twin.legend(loc="upper right", fontsize="small")
    if gpu:
        g = axes[1][0]
        g.plot(frame.index, frame["gpu_memory_mb"], label="GPU memory MB")
        g.set_ylabel("GPU memory (MB)")
        g2 = g.twinx()
        g2.plot(frame.index, frame["gpu_util_percent"], color="tab:green", label="GPU util %")
        g2.set_ylabel("GPU util %")
        g.set_xlabel("seconds")
    return _save(fig, path)


def plot_utilisation(report, *, path: str | os.PathLike | None = None):
    """Achieved GFLOP/s per stage against the measured matmul peak."""
    fig, ax = _figure()
    stages = [s for s in report.stages if s.stage != "total"]
    ax.bar([s.stage for s in stages], [s.achieved_flops_per_s / 1e9 for s in stages], color="tab:purple")
    peak = report.peak.flops_per_s / 1e9
    ax.axhline(peak, color="black", linestyle="--", label=f"measured {report.peak.dtype} matmul peak {peak:.0f}")
    for i, s in enumerate(stages):
        label = "above peak?" if s.utilisation_pct is None else f"{s.utilisation_pct:.1f}%"
        ax.annotate(label, (i, s.achieved_flops_per_s / 1e9), ha="center", va="bottom")
    ax.set_ylabel("GFLOP/s")
    ax.set_title("Achieved throughput and utilisation per stage")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_ops(profile_result, *, stage: str | None = None, top: int = 12, path: str | os.PathLike | None = None):
    """Horizontal bars of the ops with the most self time (in one stage, or overall)."""
    frame = profile_result.ops(by="self", stage=stage, top=top)
    col = "self_device_ms" if "self_device_ms" in frame else "self_cpu_ms"
    fig, ax = _figure(figsize=(7, 0.3 * len(frame) + 1.2))
    ax.barh(frame.index[::-1], frame[col][::-1])
    ax.set_xlabel(f"{col.replace('_ms', '').replace('_', ' ')} time (ms)")
    ax.set_title(f"Top ops by self time{f' in {stage}' if stage else ''}")
    return _save(fig, path)


def plot_timeline(profile_result, *, top: int = 6, path: str | os.PathLike | None = None):
    """An offline picture of a trace: the stages along time (host, and GPU on CUDA), then per stage the
    time of its top kernels (CUDA) or ops (CPU). TensorBoard's profiler views need the internet; this not."""
    import numpy as np

    prof = profile_result
    fig, (ax, bars) = _timeline_axes()
    rows = [("host", prof.spans)] + ([("GPU", prof.device_spans)] if prof.device_spans else [])
    t0 = min(s.start_us for _, spans in rows for s in spans) if prof.spans else 0.0
    stages = list(dict.fromkeys(s.stage for s in prof.spans))
    colours = {stage: f"C{i % 10}" for i, stage in enumerate(stages)}
    for y, (label, spans) in enumerate(rows):
        for span in spans:
            ax.broken_barh([((span.start_us - t0) / 1e3, span.duration_us / 1e3)], (y - 0.4, 0.8),
                           color=colours.get(span.stage, "grey"))
    ax.set_yticks(range(len(rows)), [label for label, _ in rows])
    ax.set_xlabel("ms from the start of the trace")
    ax.set_title(f"Timeline of one call: {prof.model} ({prof.unet_steps} denoising steps recorded)")
    ax.legend(handles=[_patch(colours[s], s) for s in stages], fontsize="x-small", ncols=min(len(stages), 5),
              loc="upper center", bbox_to_anchor=(0.5, -0.35))
    kind = "kernel" if prof.has_kernels else "op"
    key = "self_device_us" if kind == "kernel" else "self_cpu_us"
    per = {stage: {} for stage in stages}
    for r in prof.op_records:
        if r.kind == kind and r.stage in per:
            name = _short(r.name, kind)
            per[r.stage][name] = per[r.stage].get(name, 0.0) + getattr(r, key) / 1e3
    totals: dict[str, float] = {}
    for values in per.values():
        for name, ms in values.items():
            totals[name] = totals.get(name, 0.0) + ms
    names = sorted(totals, key=totals.get, reverse=True)[:top]
    bottom = np.zeros(len(stages))
    for i, name in enumerate(names + ["other"]):
        values = np.array([per[s].get(name, 0.0) if name != "other" else
                           sum(v for n, v in per[s].items() if n not in names) for s in stages])
        bars.bar(range(len(stages)), values, bottom=bottom, label=name, color="lightgrey" if name == "other"
                 else f"C{i % 10}")
        bottom += values
    bars.set_xticks(range(len(stages)), [s.replace("unet_step_", "step ") for s in stages], fontsize="small")
    bars.set_ylabel(f"{'device' if kind == 'kernel' else 'CPU'} self time (ms)")
    bars.set_title(f"Top {kind}s per stage")
    bars.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def _timeline_axes():
    fig, axes = _figure(figsize=(7.5, 6), nrows=2)
    return fig, (axes[0][0], axes[1][0])


def _patch(colour, label):
    from matplotlib.patches import Patch

    return Patch(color=colour, label=label)


def _short(name: str, kind: str) -> str:
    from .profiling import short_kernel_name

    return short_kernel_name(name, width=32) if kind == "kernel" else name.removeprefix("aten::")


def _ok_frame(comparison):
    frame = comparison.to_frame()
    return frame[frame["ok"] > 0] if "ok" in frame else frame


def plot_latency(comparison, *, path: str | os.PathLike | None = None):
    """Median latency per recipe with the IQR as error bars; the baseline is drawn in grey."""
    frame = _ok_frame(comparison)
    fig, ax = _figure(figsize=(max(6, 0.7 * len(frame) + 2), 3.8))
    colors = ["tab:gray" if r == comparison.baseline else "tab:blue" for r in frame.index]
    ax.bar(frame.index, frame["latency_s"], yerr=frame["latency_iqr_s"] / 2, capsize=3, color=colors)
    ax.set_ylabel("seconds per image (median, IQR bars)")
    ax.set_title(f"Latency: {comparison.model}")
    ax.tick_params(axis="x", labelrotation=35)
    return _save(fig, path)


def plot_speedup(comparison, *, path: str | os.PathLike | None = None):
    """Speed-up against the baseline in percent (seed 002 §4.3): positive is faster."""
    frame = _ok_frame(comparison).drop(index=comparison.baseline, errors="ignore")
    pct = (frame["speedup"] - 1) * 100
    fig, ax = _figure(figsize=(max(6, 0.7 * len(frame) + 2), 3.8))
    bars = ax.bar(frame.index, pct, color=["tab:green" if v >= 0 else "tab:red" for v in pct])
    ax.bar_label(bars, labels=[f"{v:+.0f}%" for v in pct], fontsize="small")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel(f"speed-up vs {comparison.baseline} (%)")
    ax.set_title("Speed-up per recipe")
    ax.tick_params(axis="x", labelrotation=35)
    return _save(fig, path)


def plot_memory(comparison, *, path: str | os.PathLike | None = None):
    """Peak model memory (CUDA allocated; on CPU weights + what a call adds) and weight bytes per recipe."""
    frame = _ok_frame(comparison)
    fig, ax = _figure(figsize=(max(6, 0.7 * len(frame) + 2), 3.8))
    x = range(len(frame))
    ax.bar([i - 0.2 for i in x], frame["peak_mem_mb"], width=0.4, label="peak memory")
    ax.bar([i + 0.2 for i in x], frame["weight_mb"], width=0.4, label="weights")
    ax.set_xticks(list(x), frame.index, rotation=35)
    ax.set_ylabel("MB")
    ax.set_title("Memory per recipe")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_image_grid(comparison, *, seed: int = 0, path: str | os.PathLike | None = None):
    """Images side by side: one row per case, one column per recipe, SSIM in each title."""
    from PIL import Image

    recipes = list(_ok_frame(comparison).index)
    cases = list(dict.fromkeys(r.case for r in comparison.records))
    fig, grid = _figure(figsize=(1.8 * len(recipes) + 0.5, 1.9 * len(cases) + 0.4), nrows=len(cases),
                        ncols=len(recipes))
    if len(cases) == len(recipes) == 1:
        grid = [[grid]]
    for i, case in enumerate(cases):
        for j, recipe in enumerate(recipes):
            ax = grid[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            rec = next((r for r in comparison.records if r.key == (recipe, case, seed) and r.status == "ok"), None)
            if rec is not None:
                ax.imshow(Image.open(Path(comparison.out) / rec.image))
                ax.set_title(f"{recipe}\nSSIM {rec.ssim:.3f}" if rec.ssim is not None else recipe, fontsize=7)
            if j == 0:
                ax.set_ylabel(case, fontsize=8)
    return _save(fig, path)


def plot_trace_diff(diff, *, top: int = 12, path: str | os.PathLike | None = None):
    """Ops whose self time changed most between two profiles: green faster, red slower (ms)."""
    frame = diff.ops.head(top)[::-1]
    fig, ax = _figure(figsize=(7, 0.32 * len(frame) + 1.4))
    ax.barh(frame.index, frame["delta_ms"], color=["tab:green" if d < 0 else "tab:red" for d in frame["delta_ms"]])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"Δ self time, {diff.after} − {diff.before} (ms per call; UNet per step)")
    ax.set_title("What got faster and what got slower")
    return _save(fig, path)


def plot_stage_breakdown(comparison, *, path: str | os.PathLike | None = None):
    """Stacked median seconds per stage for each recipe of a comparison."""
    recipes = [r for r in _ok_frame(comparison).index]
    stages = {}
    for recipe in recipes:
        runs = [r.stages for r in comparison.records if r.recipe == recipe and r.status == "ok" and r.stages]
        if runs:
            stages[recipe] = {k: sum(getattr(s, k) for s in runs) / len(runs)
                              for k in ("text_encoder", "unet", "vae_decode", "other")}
    fig, ax = _figure(figsize=(max(6, 0.7 * len(stages) + 2), 3.8))
    bottom = [0.0] * len(stages)
    for stage in ("text_encoder", "unet", "vae_decode", "other"):
        values = [max(v[stage], 0.0) for v in stages.values()]
        ax.bar(list(stages), values, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("seconds per image")
    ax.set_title("Stage breakdown per recipe")
    ax.legend(fontsize="small")
    ax.tick_params(axis="x", labelrotation=35)
    return _save(fig, path)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (lower x, higher y): faster and better."""
    from .stats import pareto_indices

    return pareto_indices(points, ("min", "max"))


def plot_quality_vs_speed(comparison, *, path: str | os.PathLike | None = None):
    """SSIM against latency per recipe, the Pareto front (faster and better) joined and labelled."""
    frame = _ok_frame(comparison).dropna(subset=["ssim", "latency_s"])
    points = list(zip(frame["latency_s"], frame["ssim"]))
    front = sorted(pareto_front(points), key=lambda i: points[i][0])
    fig, ax = _figure()
    ax.scatter(frame["latency_s"], frame["ssim"], color="tab:blue", label="recipe")
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="tab:red", marker="o",
            label="Pareto front")
    for name, (x, y) in zip(frame.index, points):
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("seconds per image (median)")
    ax.set_ylabel(f"SSIM vs {comparison.baseline}")
    ax.set_title("Quality against speed")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_diff_grid(comparison, *, seed: int = 0, path: str | os.PathLike | None = None):
    """Per case: the baseline image, then each recipe's image over its luminance difference heat map."""
    from PIL import Image

    from .quality import diff_map

    recipes = [r for r in _ok_frame(comparison).index if r != comparison.baseline]
    cases = list(dict.fromkeys(r.case for r in comparison.records))
    fig, grid = _figure(figsize=(1.8 * (2 * len(recipes) + 1) + 0.5, 1.9 * len(cases) + 0.4), nrows=len(cases),
                        ncols=2 * len(recipes) + 1)
    if len(cases) == 1 and not recipes:
        grid = [[grid]]
    for i, case in enumerate(cases):
        base = next((r for r in comparison.records if r.key == (comparison.baseline, case, seed)), None)
        row = grid[i]
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        if base is None or base.status != "ok":
            continue
        ref = Path(comparison.out) / base.image
        row[0].imshow(Image.open(ref))
        row[0].set_title(comparison.baseline, fontsize=7)
        row[0].set_ylabel(case, fontsize=8)
        for j, recipe in enumerate(recipes):
            rec = next((r for r in comparison.records if r.key == (recipe, case, seed) and r.status == "ok"), None)
            if rec is None:
                continue
            img = Path(comparison.out) / rec.image
            row[1 + 2 * j].imshow(Image.open(img))
            row[1 + 2 * j].set_title(recipe, fontsize=7)
            row[2 + 2 * j].imshow(diff_map(img, ref), cmap="magma", vmin=0, vmax=64)
            row[2 + 2 * j].set_title(f"|Δ| SSIM {rec.ssim:.2f}" if rec.ssim is not None else "|Δ|", fontsize=7)
    return _save(fig, path)


def plot_steps_sweep(comparison, *, path: str | os.PathLike | None = None):
    """Time and SSIM against the number of steps (recipes that differ in ``steps``)."""
    frame = _ok_frame(comparison)
    steps = {r.recipe: r.steps for r in comparison.records}
    pts = sorted((steps[n], row["latency_s"], row["ssim"]) for n, row in frame.iterrows())
    fig, ax = _figure()
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color="tab:blue", label="seconds")
    ax.set_xlabel("denoising steps")
    ax.set_ylabel("seconds per image", color="tab:blue")
    twin = ax.twinx()
    twin.plot([p[0] for p in pts], [p[2] for p in pts], marker="s", color="tab:orange", label="SSIM")
    twin.set_ylabel(f"SSIM vs {comparison.baseline}", color="tab:orange")
    ax.set_title("Time and quality against steps")
    return _save(fig, path)


def plot_images(images, titles=None, *, ncols: int = 4, path: str | os.PathLike | None = None):
    """Images in a grid with optional titles (e.g. prompts and their adherence)."""
    import math
    import textwrap

    images = list(images)
    titles = list(titles) if titles is not None else [""] * len(images)
    ncols = max(1, min(ncols, len(images)))
    nrows = math.ceil(len(images) / ncols)
    fig, grid = _figure(figsize=(2.1 * ncols, 2.3 * nrows), nrows=nrows, ncols=ncols)
    if nrows == ncols == 1:
        grid = [[grid]]
    for k in range(nrows * ncols):
        ax = grid[k // ncols][k % ncols]
        ax.set_axis_off()
        if k < len(images):
            ax.imshow(images[k])
            ax.set_title(textwrap.fill(titles[k], 30), fontsize=6)
    return _save(fig, path)


def plot_adherence(reports: dict, *, path: str | os.PathLike | None = None):
    """Adherence per attribute, one bar group per configuration (``{name: AdherenceReport}``)."""
    import numpy as np

    scores = {name: r.per_attribute() for name, r in reports.items() if r.prompts}
    if not scores:  # e.g. a real model on free-form prompts: nothing the detector can score
        fig, ax = _figure(figsize=(6, 1.2))
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no shape-scene prompts: adherence does not apply", ha="center", va="center")
        return _save(fig, path)
    attributes = [a for a in next(iter(scores.values())) if a != "exact"]
    fig, ax = _figure(figsize=(max(6.0, 1.1 * len(attributes) * max(1, len(scores)) ** 0.5), 3.2))
    width = 0.8 / len(scores)
    x = np.arange(len(attributes))
    for i, (name, s) in enumerate(scores.items()):
        ax.bar(x + i * width, [s[a] for a in attributes], width, label=name)
    ax.set_xticks(x + 0.4 - width / 2, attributes)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("adherence (1 = matches the prompt)")
    ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)
