"""Takeaways written from a run's own results: each notebook ends with what *this* run found, never a
fixed claim that the numbers beside it might contradict. Every function returns Markdown."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# a combination whose measured speed-up is within this fraction of the product of its parts' is
# "as if independent"; beyond it, the parts overlap (below) or help each other (above)
INDEPENDENT_BAND = 0.05


def _pct(speedup: float) -> str:
    return f"{(speedup - 1) * 100:+.0f} %"


def diagnose(bench, diagnosis=None) -> str:
    """Where this run's time went (stage shares of the first case) and the first findings with their fixes."""
    case = next((c for c in bench.cases if c.stages), None)
    if case is None:
        return "- No case ran without error: nothing to diagnose."
    shares = case.stages.shares()
    top = max(shares, key=shares.get)
    lines = [f"- **{top}** takes the largest share of one image here: "
             + ", ".join(f"{k} {v:.0%}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1]))
             + f" of {case.latency.median:.3f} s ({case.case.steps} steps, "
             f"{case.stages.denoiser_per_step * 1e3:.1f} ms per denoiser step)."]
    if shares.get("denoiser", 0) >= 0.5:
        lines.append("- The denoising loop dominates, so cheaper denoiser steps (precision, layout, compile) and "
                     "fewer steps with a better scheduler are the levers to measure first.")
    if diagnosis is not None:
        for f in diagnosis.findings[:3]:
            fix = f" Try: {', '.join(f'`{s}`' for s in f.suggest)}." if f.suggest else ""
            lines.append(f"- Finding `{f.rule}` ({f.severity}): {f.message.rstrip('. ')}.{fix}")
        if not diagnosis.findings:
            lines.append("- No rule fired on this run.")
    return "\n".join(lines)


def _present(value) -> bool:
    """A number that is there (not None, not NaN)."""
    return value is not None and value == value


def compare(comparison, families: Mapping[str, Sequence[str]] | None = None) -> str:
    """Fastest recipe, best per family, what costs time, what saves memory, what moved the pictures."""
    from .experiments import successful

    frame = comparison.to_frame()
    base = comparison.baseline
    ok = successful(frame).drop(index=base, errors="ignore").dropna(subset=["speedup"])
    if ok.empty:
        return f"- No recipe besides `{base}` ran here."
    best = ok["speedup"].idxmax()
    lines = [f"- Fastest here: **`{best}`**, {ok.loc[best, 'speedup']:.2f}× the speed of `{base}` "
             f"({frame.loc[base, 'latency_s']:.3f} s → {ok.loc[best, 'latency_s']:.3f} s per image)."]
    for family, names in (families or {}).items():
        runs = ok.loc[[n for n in names if n in ok.index]]
        if runs.empty:
            continue
        top = runs["speedup"].idxmax()
        others = ", ".join(f"`{n}` {_pct(s)}" for n, s in runs["speedup"].items() if n != top)
        lines.append(f"- {family}: " + (f"best `{top}` ({_pct(runs.loc[top, 'speedup'])}); {others}" if others
                                        else f"`{top}` {_pct(runs.loc[top, 'speedup'])}"))
    slower = ok[ok["speedup"] < 0.95]
    if not slower.empty:
        lines.append("- Slower than the baseline here: " + ", ".join(
            f"`{n}` ({_pct(s)})" for n, s in slower["speedup"].sort_values().items()) + ".")
    if "weight_mb" in ok and frame.loc[base, "weight_mb"]:
        lightest = ok["weight_mb"].idxmin()
        ratio = frame.loc[base, "weight_mb"] / ok.loc[lightest, "weight_mb"]
        if ratio > 1.05:
            lines.append(f"- Smallest weights: `{lightest}`, {ratio:.1f}× fewer bytes than `{base}` "
                         f"({_pct(ok.loc[lightest, 'speedup'])} speed).")
    if ok["ssim"].notna().any():
        worst = ok["ssim"].idxmin()
        lines.append(f"- Pictures moved most with `{worst}` (SSIM {ok.loc[worst, 'ssim']:.3f} against `{base}`); "
                     f"{int((ok['ssim'] > 0.99).sum())} of {len(ok)} recipes kept SSIM above 0.99.")
    if "cache_skipped" in ok and ok["cache_skipped"].notna().any():
        cached = ok[ok["cache_skipped"].notna()]
        lines.append("- Caches: " + "; ".join(
            f"`{n}` skipped {row['cache_skipped']:.0%} of its evaluations ({_pct(row['speedup'])} speed"
            + (f", final latent {row['trajectory_rel_err']:.1%} off `{base}`'s)" if _present(row.get("trajectory_rel_err"))
               else ")") for n, row in cached.iterrows()) + ".")
    skipped = frame[frame.get("ok", 1) == 0] if "ok" in frame else frame.iloc[0:0]
    if not skipped.empty:
        lines.append("- Not run here: " + "; ".join(
            f"`{n}` ({str(r)[:80]})" for n, r in skipped.get("reason", skipped["status"]).items()) + ".")
    if int(frame.get("outliers", frame["ok"] * 0).sum()):
        lines.append(f"- {int(frame['outliers'].sum())} run(s) had an outlier repeat (see `outliers`): the machine "
                     "was disturbed; medians resist it, but re-run before trusting small differences.")
    return "\n".join(lines)


def interactions(comparison) -> str:
    """For each combination: did its parts' gains multiply, overlap or help each other, by how much."""
    from .experiments import successful

    table = comparison.interactions()
    if table.empty:
        return "- No combination ran alongside all of its parts."
    lines = []
    for combo, row in table.iterrows():
        ratio = row["gain_ratio"]
        verdict = ("multiplied as if independent" if abs(ratio - 1) <= INDEPENDENT_BAND else
                   "overlapped (less than the product)" if ratio < 1 else "did better than the product")
        lines.append(f"- `{combo}`: measured {row['measured_speedup']:.2f}× against {row['expected_speedup']:.2f}× "
                     f"expected from its parts (gain ratio {ratio:.2f}): the parts {verdict}.")
    speedups = successful(comparison.to_frame())["speedup"]
    fastest = speedups.idxmax()
    lines.append(f"- Fastest of everything measured here: `{fastest}` ({speedups[fastest]:.2f}×).")
    return "\n".join(lines)


def verify(comparison, quality, chosen: str) -> str:
    """Whether the chosen recipe is faster beyond the noise and passes the gate; how the others did."""
    frame = comparison.to_frame()
    summary = quality.summary()
    lines = []
    for recipe in [chosen, *[r for r in frame.index if r not in (chosen, comparison.baseline)]]:
        if recipe not in frame.index or frame.loc[recipe, "ok"] == 0:
            continue
        row = frame.loc[recipe]
        verdict = summary.loc[recipe, "verdict"] if recipe in summary.index else "not gated"
        noise = row["latency_iqr_s"] + frame.loc[comparison.baseline, "latency_iqr_s"]
        gap = abs(frame.loc[comparison.baseline, "latency_s"] - row["latency_s"])
        repeats = min((r.latency.n for r in comparison.records if r.recipe == recipe and r.status == "ok"), default=0)
        spread = ("one repeat per run: no spread measured, so no claim beyond the noise" if repeats < 2 else
                  f"a difference {'beyond' if gap > noise else 'within'} the run-to-run spread")
        extra = ""
        if recipe in summary.index and "adherence" in summary:
            extra = (f", adherence {summary.loc[recipe, 'adherence']:.2f} "
                     f"(baseline {summary.loc[recipe, 'baseline_adherence']:.2f})")
        lines.append(f"- `{recipe}`{' (chosen)' if recipe == chosen else ''}: {row['speedup']:.2f}× "
                     f"({_pct(row['speedup'])}, {spread}), quality gate "
                     f"**{verdict}** (min SSIM {summary.loc[recipe, 'min_ssim']:.3f}{extra})"
                     if recipe in summary.index else
                     f"- `{recipe}`: {row['speedup']:.2f}×, not gated")
    return "\n".join(lines)


def lora(unfused_s: float, fused_s: float, tolerance: float = 0.05) -> str:
    """What fusing the LoRA did to the time per call in this run."""
    ratio = fused_s / unfused_s
    if abs(ratio - 1) <= tolerance:
        said = "the same time within 5 %"
    elif ratio < 1:
        said = f"{1 - ratio:.0%} less time: fusing removes the LoRA's extra matmuls from every call"
    else:
        said = (f"{ratio - 1:.0%} more time: on a model this small the difference is noise-sized, "
                "re-run with more repeats before reading it as a cost")
    return f"- LoRA: unfused {unfused_s:.3f} s, fused {fused_s:.3f} s per call: {said}."


def fallback(result) -> str:
    """What the out-of-memory fallback had to give up in this run."""
    if not result.actions:
        return "- The out-of-memory fallback was not needed: the first call fitted."
    size = result.case.height or "native"
    budget = f" under a {result.budget_mb:.2f} MB budget" if result.budget_mb else ""
    return (f"- Out-of-memory fallback{budget}: {len(result.errors)} out-of-memory error(s), then "
            + " → ".join(f"`{a}`" for a in result.actions) + f"; the image finally came at {size} px.")
