"""Matplotlib figures of lab results; computing stays in the other modules."""

from __future__ import annotations

import os
from pathlib import Path

from .denoiser import STEP_PREFIX

STAGES = ("text_encoder", "denoiser", "vae_decode", "other")


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


def wrap_label(name: str, width: int = 30) -> str:
    """A recipe or op name broken into lines of at most ``width`` characters, at ``+`` where it can."""
    import textwrap

    parts, lines, line = name.replace("+", "+\x00").split("\x00"), [], ""
    for part in parts:
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = ""
        line += part
    lines.append(line)
    return "\n".join(sub for ln in lines for sub in (textwrap.wrap(ln, width) or [ln]))


def layout_problems(fig) -> list[str]:
    """Texts of ``fig`` (titles, axis and tick labels, annotations) that are clipped by its edge or overlap
    another text; empty when the figure reads cleanly. Draws the figure first."""
    if not hasattr(fig.canvas, "get_renderer"):  # a closed pyplot figure keeps only a base canvas
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    texts = []
    for ax in fig.axes:
        (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
        ticks = [t for t in ax.get_xticklabels() if x0 <= t.get_position()[0] <= x1]  # the drawn ones
        ticks += [t for t in ax.get_yticklabels() if y0 <= t.get_position()[1] <= y1]
        axis = [ax.xaxis.label, ax.yaxis.label, *ticks] if ax.axison else []  # set_axis_off() draws none of them
        candidates = [ax.title, ax._left_title, ax._right_title, *axis, *ax.texts]
        legend = ax.get_legend()
        if legend is not None:
            candidates += list(legend.get_texts())
        texts += [t for t in candidates if t.get_visible() and t.get_text().strip()]
    texts += [t for t in fig.texts if t.get_visible() and t.get_text().strip()]
    texts += [t for legend in fig.legends for t in legend.get_texts()]
    problems, extents = [], []
    for t in texts:
        e = t.get_window_extent(renderer)
        if e.x0 < box.x0 - 1 or e.y0 < box.y0 - 1 or e.x1 > box.x1 + 1 or e.y1 > box.y1 + 1:
            problems.append(f"clipped: {t.get_text()!r}")
        extents.append((t, e))
    for i, (t, e) in enumerate(extents):
        for u, f in extents[i + 1:]:
            shrunk = e.expanded(0.98, 0.9)  # touching edges are not a collision
            if shrunk.overlaps(f.expanded(0.98, 0.9)) and not (t in getattr(t.axes, "texts", ())
                                                                  or u in getattr(u.axes, "texts", ())):
                problems.append(f"overlap: {t.get_text()!r} / {u.get_text()!r}")
    return problems


def _bar_height(labels) -> float:
    """Figure height that gives every (wrapped) bar label room for its lines."""
    per_bar = max((label.count("\n") + 1 for label in labels), default=1) * 0.19 + 0.16
    return max(2.6, per_bar * len(labels) + 1.4)


def _save(fig, path: str | os.PathLike | None):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def plot_stages(result, *, path: str | os.PathLike | None = None):
    """Stacked bar per case: median seconds in text encoder, denoiser, VAE decode and other."""
    stages = {c.case.name: {k: getattr(c.stages, k) for k in STAGES}
              for c in result.cases if c.stages}
    return _stacked_stages(stages, f"Where the time goes: {result.model} ({result.dtype}, {result.device})", path)


def plot_resources(monitor, *, path: str | os.PathLike | None = None):
    """CPU % and RSS over time (GPU memory and utilisation too when sampled, and board power and SM clock
    against its maximum where NVML reads them)."""
    import numpy as np

    frame = monitor.frame() if hasattr(monitor, "frame") else monitor
    gpu = "gpu_memory_mb" in frame
    power = "gpu_power_w" in frame or "sm_clock_mhz" in frame
    rows = 1 + gpu + power
    fig, axes = _figure(figsize=(7, {1: 3.5, 2: 5.0}.get(rows, 7.0)), nrows=rows)
    ax = axes[0][0] if rows > 1 else axes
    # 0.05 s samples of a 2-core machine jump between 0 and 200 %: a raw line is a solid band, so the
    # samples are drawn faint and a 0.5 s rolling mean on top
    window = max(1, round(0.5 / float(np.median(np.diff(frame.index))))) if len(frame) > 2 else 1
    ax.plot(frame.index, frame["cpu_percent"], color="tab:blue", alpha=0.25, linewidth=0.6)
    ax.plot(frame.index, frame["cpu_percent"].rolling(window, min_periods=1, center=True).mean(),
            color="tab:blue", label=f"CPU % ({window}-sample mean)" if window > 1 else "CPU %")
    ax.set_ylabel("CPU % (100 = 1 core)")
    ax.set_xlabel("seconds")
    twin = ax.twinx()
    twin.plot(frame.index, frame["rss_mb"], color="tab:orange", label="RSS MB")
    twin.set_ylabel("RSS (MB)")
    ax.set_title("Resources during the run")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize="small")
    if gpu:
        g = axes[1][0]
        g.plot(frame.index, frame["gpu_memory_mb"], label="GPU memory MB")
        g.set_ylabel("GPU memory (MB)")
        g2 = g.twinx()
        g2.plot(frame.index, frame["gpu_util_percent"], color="tab:green", label="GPU util %")
        g2.set_ylabel("GPU util %")
        g.set_xlabel("seconds")
    if power:
        p = axes[rows - 1][0]
        if "gpu_power_w" in frame:
            p.plot(frame.index, frame["gpu_power_w"], color="tab:red", label="board power W")
        p.set_ylabel("power (W)")
        if "sm_clock_mhz" in frame:
            c = p.twinx()
            c.plot(frame.index, frame["sm_clock_mhz"], color="tab:purple", label="SM clock MHz")
            if "sm_clock_max_mhz" in frame:
                c.plot(frame.index, frame["sm_clock_max_mhz"], color="tab:purple", ls="--", label="max clock")
            c.set_ylabel("SM clock (MHz)")
        lines = p.get_legend_handles_labels()[0] + (c.get_legend_handles_labels()[0] if "sm_clock_mhz" in frame else [])
        p.legend(handles=lines, loc="upper left", bbox_to_anchor=(1.12, 1.0), fontsize="small")  # beside, not on
        p.set_xlabel("seconds")
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
    names = [_label(n) for n in frame.index[::-1]]
    ax.barh(range(len(frame)), frame[col][::-1])
    ax.set_yticks(range(len(frame)), names, fontsize=8)
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
    ax.set_title(f"Timeline of one call: {prof.model}\n{steps_recorded(prof)}", fontsize="medium")
    # beside the timeline, not under it: below, it lands on the second plot's title
    ax.legend(handles=[_patch(colours[s], s.replace(STEP_PREFIX, "step ")) for s in stages], fontsize="x-small",
              loc="upper left", bbox_to_anchor=(1.0, 1.0), ncols=1 if len(stages) <= 8 else 2)
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
    bars.set_xticks(range(len(stages)), [s.replace(STEP_PREFIX, "step ") for s in stages], fontsize="small")
    bars.set_ylabel(f"{'device' if kind == 'kernel' else 'CPU'} self time (ms)")
    bars.set_title(f"Top {kind}s per stage")
    bars.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def steps_recorded(prof) -> str:
    """How many denoiser calls the trace holds, and why when it is not the number of steps asked for."""
    n, asked = prof.denoiser_steps, prof.record_steps
    if n == asked:
        return f"{n} denoising steps recorded"
    return (f"{n} denoiser calls recorded for the {asked} steps asked: the scheduler evaluates the denoiser "
            + ("more often than once a step (PNDM's PLMS start repeats a timestep; Heun's is second order)"
               if n > asked else "fewer times than the steps asked"))


def _timeline_axes():
    fig, axes = _figure(figsize=(7.5, 6), nrows=2)
    return fig, (axes[0][0], axes[1][0])


def _patch(colour, label):
    from matplotlib.patches import Patch

    return Patch(color=colour, label=label)


def _short(name: str, kind: str) -> str:
    from .profiling import short_kernel_name

    # matplotlib hides legend labels that start with "_" (aten::_scaled_dot_product_...)
    return short_kernel_name(name, width=32) if kind == "kernel" else name.removeprefix("aten::").lstrip("_")


def _label(name, width: int = 38) -> str:
    """A name (recipe, op) short enough for an axis label."""
    name = str(name)
    return name if len(name) <= width else name[: width - 2] + "…"


def _ok_frame(comparison):
    from .experiments import successful

    return successful(comparison.to_frame())


def _busy_note(comparison) -> str:
    """A title suffix naming contention, so a plot cut out of its notebook still says it cannot be trusted."""
    return "\nmeasured under contention: speed-ups untrusted" if comparison.busy else ""


def plot_latency(comparison, *, path: str | os.PathLike | None = None):
    """Latency per recipe (geometric mean of run medians) with the IQR as error bars; baseline in grey.

    Horizontal bars: recipe names read across, whatever their length."""
    frame = _ok_frame(comparison)[::-1]
    labels = [wrap_label(r) for r in frame.index]
    fig, ax = _figure(figsize=(7, _bar_height(labels)))
    colors = ["tab:gray" if r == comparison.baseline else "tab:blue" for r in frame.index]
    ax.barh(labels, frame["latency_s"], xerr=frame["latency_iqr_s"] / 2, capsize=3,
            color=colors)
    ax.set_xlabel("seconds per image (IQR bars)")
    ax.set_title(f"Latency: {comparison.model} (baseline {comparison.baseline} in grey){_busy_note(comparison)}",
                 fontsize=10)
    return _save(fig, path)


def plot_speedup(comparison, *, path: str | os.PathLike | None = None):
    """Speed-up against the baseline in percent (seed 002 §4.3): positive is faster; the same
    ``speedup`` as every table (baseline ÷ recipe latency over matched runs)."""
    frame = _ok_frame(comparison).drop(index=comparison.baseline, errors="ignore")[::-1]
    pct = (frame["speedup"] - 1) * 100
    verdicts = frame["verdict"] if "verdict" in frame else [""] * len(frame)
    labels = [wrap_label(r) for r in frame.index]
    fig, ax = _figure(figsize=(7, _bar_height(labels)))
    # a bar is coloured only when its verdict says it can be believed; the whiskers are its 95 % interval
    colours = {"faster": "tab:green", "slower": "tab:red"}
    err = None
    if "speedup_low" in frame:
        err = [(pct - (frame["speedup_low"] - 1) * 100).clip(lower=0), ((frame["speedup_high"] - 1) * 100 - pct).clip(lower=0)]
    bars = ax.barh(labels, pct, xerr=err, capsize=3, color=[colours.get(v, "lightgrey") for v in verdicts])
    short = {"not distinguishable": "n.d.", "untrusted": "untrusted"}
    ax.bar_label(bars, labels=[f"{v:+.0f}%" + (f" ({short[w]})" if w in short else "") for v, w in zip(pct, verdicts)],
                 fontsize="small", padding=2)
    ax.axvline(0, color="black", linewidth=0.8)
    lo, hi = min(0.0, pct.min() if len(pct) else 0.0), max(0.0, pct.max() if len(pct) else 0.0)
    pad = 0.18 * max(hi - lo, 1.0)  # room for the value labels at both ends
    ax.set_xlim(lo - (pad if lo < 0 else 0.05 * pad), hi + (pad if hi > 0 else 0.05 * pad))
    ax.set_xlabel(f"speed-up vs {comparison.baseline} (%)")
    ax.set_title(f"Speed-up per recipe (grey: not distinguishable or untrusted){_busy_note(comparison)}", fontsize=10)
    return _save(fig, path)


def plot_memory(comparison, *, path: str | os.PathLike | None = None):
    """Peak model memory (CUDA allocated; on CPU weights + what a call adds) and weight bytes per recipe."""
    frame = _ok_frame(comparison)[::-1]
    labels = [wrap_label(r) for r in frame.index]
    fig, ax = _figure(figsize=(7, _bar_height(labels) + 0.3))
    y = range(len(frame))
    ax.barh([i + 0.2 for i in y], frame["peak_mem_mb"], height=0.4, label="peak memory")
    ax.barh([i - 0.2 for i in y], frame["weight_mb"], height=0.4, label="weights")
    ax.set_yticks(list(y), labels)
    ax.set_xlabel("MB")
    ax.set_title("Memory per recipe", fontsize=10)
    ax.legend(fontsize="small", loc="lower right")
    return _save(fig, path)


def plot_image_grid(comparison, *, seed: int = 0, path: str | os.PathLike | None = None):
    """Images side by side: one row per case, one column per recipe, SSIM in each title."""
    from PIL import Image

    recipes = list(_ok_frame(comparison).index)
    cases = list(dict.fromkeys(r.case for r in comparison.records))
    lines = max((wrap_label(r, 16).count("\n") + 2 for r in recipes), default=1)
    fig, grid = _figure(figsize=(1.8 * len(recipes) + 0.5, (1.7 + 0.14 * lines) * len(cases) + 0.4),
                        nrows=len(cases), ncols=len(recipes))
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
                name = wrap_label(recipe, 16)
                ax.set_title(f"{name}\nSSIM {rec.ssim:.3f}" if rec.ssim is not None else name, fontsize=7)
            if j == 0:
                ax.set_ylabel(case, fontsize=8)
    return _save(fig, path)


def plot_trace_diff(diff, *, top: int = 12, path: str | os.PathLike | None = None):
    """Ops whose self time changed most between two profiles: green faster, red slower (ms)."""
    frame = diff.ops.head(top)[::-1]
    fig, ax = _figure(figsize=(7, 0.34 * len(frame) + 1.6))
    names = [_label(n) for n in frame.index]
    ax.barh(range(len(frame)), frame["delta_ms"],
            color=["tab:green" if d < 0 else "tab:red" for d in frame["delta_ms"]])
    ax.set_yticks(range(len(frame)), names, fontsize=8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(wrap_label(f"Δ self time, {diff.after} − {diff.before} (ms per call; UNet per step)", 70))
    ax.set_title("What got faster and what got slower", fontsize=10)
    return _save(fig, path)


def _stacked_stages(stages: dict[str, dict[str, float]], title: str, path):
    """Horizontal stacked bars, one per label, of seconds per stage."""
    labels = list(stages)[::-1]
    names = [wrap_label(label) for label in labels]
    fig, ax = _figure(figsize=(7, _bar_height(names) + 0.4))
    left = [0.0] * len(labels)
    for stage in STAGES:
        values = [max(stages[label][stage], 0.0) for label in labels]
        ax.barh(names, values, left=left, label=stage)
        left = [a + v for a, v in zip(left, values)]
    ax.set_xlabel("seconds per image (median)")
    ax.set_title(title, fontsize=10)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=4, fontsize="small")
    return _save(fig, path)


def plot_stage_breakdown(comparison, *, path: str | os.PathLike | None = None):
    """Stacked median seconds per stage for each recipe of a comparison."""
    recipes = [r for r in _ok_frame(comparison).index]
    stages = {}
    for recipe in recipes:
        runs = [r.stages for r in comparison.records if r.recipe == recipe and r.status == "ok" and r.stages]
        if runs:
            stages[recipe] = {k: sum(getattr(s, k) for s in runs) / len(runs) for k in STAGES}
    return _stacked_stages(stages, "Stage breakdown per recipe", path)


def plot_stage_comparison(results: dict, *, path: str | os.PathLike | None = None):
    """Baseline and recipe(s) side by side: stacked stages of each ``{label: BenchmarkResult}`` (first case)."""
    stages = {}
    for label, result in results.items():
        st = next((c.stages for c in result.cases if c.stages), None)
        if st is not None:
            stages[label] = {k: getattr(st, k) for k in STAGES}
    return _stacked_stages(stages, "Where the time goes: " + " vs ".join(results), path)


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
    _label_points(ax, list(frame.index), points)
    ax.set_xlabel("seconds per image (median)")
    ax.set_ylabel(f"SSIM vs {comparison.baseline}")
    ax.set_title("Quality against speed")
    ax.legend(fontsize="small")
    return _save(fig, path)


def _label_points(ax, names, points) -> None:
    """Name each point without running off the axes or onto a neighbour: labels point inwards, and points
    close together get their labels stacked one line apart."""
    if not points:
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xmid = (min(xs) + max(xs)) / 2
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    placed: list[tuple[float, float]] = []
    for name, (x, y) in sorted(zip(names, points), key=lambda kv: (kv[1][1], kv[1][0])):
        near = sum(1 for px, py in placed if abs(py - y) < 0.06 * span_y and abs(px - x) < 0.25 * span_x)
        right = x > xmid
        ax.annotate(wrap_label(str(name), 24), (x, y), fontsize=7, xytext=(-5 if right else 5, 4 + 10 * near),
                    textcoords="offset points", ha="right" if right else "left", va="bottom",
                    arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5} if near else None)
        placed.append((x, y))
    ax.margins(x=0.15, y=0.2)


def plot_diff_grid(comparison, *, seed: int = 0, path: str | os.PathLike | None = None):
    """Per case: the baseline image, then each recipe's image over its luminance difference heat map."""
    from PIL import Image

    from .quality import diff_map

    recipes = [r for r in _ok_frame(comparison).index if r != comparison.baseline]
    cases = list(dict.fromkeys(r.case for r in comparison.records))
    lines = max((wrap_label(r, 16).count("\n") + 1 for r in recipes), default=1)
    fig, grid = _figure(figsize=(1.8 * (2 * len(recipes) + 1) + 0.5, (1.7 + 0.14 * lines) * len(cases) + 0.4),
                        nrows=len(cases), ncols=2 * len(recipes) + 1)
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
            row[1 + 2 * j].set_title(wrap_label(recipe, 16), fontsize=7)
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
    lines = max((len(textwrap.wrap(t, 26)) for t in titles), default=0)
    # a caption must stay readable when the notebook shrinks the figure to its column (~9 pt at 100 %)
    fig, grid = _figure(figsize=(2.8 * ncols, (2.6 + 0.17 * lines) * nrows), nrows=nrows, ncols=ncols)
    if nrows == ncols == 1:
        grid = [[grid]]
    for k in range(nrows * ncols):
        ax = grid[k // ncols][k % ncols]
        ax.set_axis_off()
        if k < len(images):
            ax.imshow(images[k])
            ax.set_title(textwrap.fill(titles[k], 26), fontsize=9)
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


def plot_thread_scaling(scaling, *, path: str | os.PathLike | None = None):
    """Latency (median, IQR bars) against CPU threads, beside perfect scaling from the fewest threads."""
    pts = scaling.measured
    fig, ax = _figure()
    x = [p.threads for p in pts]
    ax.errorbar(x, [p.latency_s for p in pts], yerr=[p.iqr_s / 2 for p in pts], marker="o", capsize=4,
                color="tab:blue", label="measured (IQR)")
    if pts:
        ax.plot(x, [pts[0].latency_s * pts[0].threads / n for n in x], ls="--", color="grey",
                label="perfect scaling")
        best = scaling.point(scaling.best)
        ax.annotate(f"best: {best.threads}", (best.threads, best.latency_s), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize="small")
    ax.set_xticks(x)
    ax.set_xlabel("CPU threads (intra- and inter-op)")
    ax.set_ylabel("seconds per call")
    ax.set_title(f"Thread scaling: {scaling.model} ({scaling.cores} cores)")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_throughput(result, *, path: str | os.PathLike | None = None):
    """Images per second against latency per call, one point per batch size (IQR bars on both axes)."""
    points = result.ok()
    fig, ax = _figure()
    ax.errorbar([p.latency.median for p in points], [p.images_per_s for p in points],
                xerr=[p.latency.iqr / 2 for p in points], yerr=[p.images_per_s_iqr / 2 for p in points],
                marker="o", capsize=3, color="tab:blue")
    for p in points:
        ax.annotate(f"{p.prompts}×{p.images_per_prompt}", (p.latency.median, p.images_per_s),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("seconds per call (median, IQR)")
    ax.set_ylabel("images per second")
    ax.set_title(f"Throughput against latency: {result.model} (prompts × images per prompt)", fontsize=9)
    return _save(fig, path)


def plot_trajectory_drift(comparison, *, path: str | os.PathLike | None = None):
    """Each recipe's drift from the baseline's latents, step by step (its worst run; ``lab.trajectory``)."""
    from .trajectory import drift_frame

    frame = drift_frame(comparison)
    fig, ax = _figure()
    for recipe in (c for c in frame.columns if c != comparison.baseline):
        ax.plot(frame.index, frame[recipe], marker="o", markersize=3, label=wrap_label(recipe, 28))
    if frame.empty or len(frame.columns) <= 1:
        ax.text(0.5, 0.5, "no trajectories to compare\n(the baseline's, or a recipe's, is missing)",
                ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=7, loc="upper left")
    ax.set_xlabel("denoising step")
    ax.set_ylabel("relative L2 error of the latents")
    ax.set_title(f"Drift from {wrap_label(comparison.baseline, 30)}'s trajectory")
    return _save(fig, path)
