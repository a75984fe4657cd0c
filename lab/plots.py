"""Matplotlib figures of lab results; computing stays in the other modules."""

from __future__ import annotations

import os
from pathlib import Path


def _figure(figsize=(7, 3.5), nrows: int = 1):
    """A new figure; one axis, or a list of ``nrows`` stacked axes."""
    import sys

    import matplotlib

    if not os.environ.get("MPLBACKEND") and "ipykernel" not in sys.modules:
        matplotlib.use("Agg")  # headless scripts and tests: never try to open a window
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, 1, figsize=figsize, layout="constrained", squeeze=nrows == 1)
    return fig, (axes if nrows == 1 else list(axes[:, 0]))


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
    ax = axes[0] if gpu else axes
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
        g = axes[1]
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
        ax.annotate(f"{s.utilisation_pct:.1f}%", (i, s.achieved_flops_per_s / 1e9), ha="center", va="bottom")
    ax.set_ylabel("GFLOP/s")
    ax.set_title("Achieved throughput and utilisation per stage")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_ops(profile_result, *, stage: str | None = None, top: int = 12, path: str | os.PathLike | None = None):
    """Horizontal bars of the ops with the most self time (in one stage, or overall)."""
    frame = profile_result.ops(by="self", stage=stage, top=top)
    col = "self_device_us" if frame["self_device_us"].sum() > 0 else "self_cpu_us"
    fig, ax = _figure(figsize=(7, 0.3 * len(frame) + 1.2))
    ax.barh(frame.index[::-1], frame[col][::-1] / 1e3)
    ax.set_xlabel(f"{col.replace('_us', '')} (ms)")
    ax.set_title(f"Top ops by self time{f' in {stage}' if stage else ''}")
    return _save(fig, path)
