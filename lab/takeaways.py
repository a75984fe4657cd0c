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
    st = case.stages
    lines = []
    if case.host is not None and case.host.busy:
        lines.append(f"- **Measured under contention** ({'; '.join(case.host.reasons)}; this process got "
                     f"{case.host.share:.0%} of the CPU time used): these times describe the host as much as the "
                     "pipeline; rerun on a quiet host before judging them against a budget.")
    lines.append(f"- **{top}** takes the largest share of one image here: "
                 + ", ".join(f"{k} {v:.0%}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1]))
                 + f" of {case.latency.median:.3f} s (median of {case.latency.n}; the denoiser "
                 f"{st.denoiser:.3f} s over {_calls(len(st.steps) or case.case.steps, case.case.steps)} (median "
                 f"{st.denoiser_per_step * 1e3:.1f} ms each), text encoder {st.text_encoder:.3f} s, VAE decode "
                 f"{st.vae_decode:.3f} s, other {st.other:.3f} s).")
    if shares.get("denoiser", 0) >= 0.5:
        lines.append("- The denoising loop dominates, so cheaper denoiser steps (precision, layout, compile) and "
                     "fewer steps with a better scheduler are the levers to measure first.")
    if case.energy is not None:
        e = case.energy
        lines.append(f"- Energy: **{e.joules_per_image:.2f} J per image** at {e.mean_watts:.1f} W mean ({e.source}; "
                     f"{e.note})." if e.readable else f"- Energy per image is not measured here: {e.note}.")
    if diagnosis is not None:
        for f in diagnosis.findings[:3]:
            fix = f" Try: {', '.join(f'`{s}`' for s in f.suggest)}." if f.suggest else ""
            lines.append(f"- Finding `{f.rule}` ({f.severity}): {f.message.rstrip('. ')}.{fix}")
        if not diagnosis.findings:
            lines.append("- No rule fired on this run.")
    return "\n".join(lines)


def contention(comparison) -> str:
    """A first line saying the host was busy and nothing measured here is a speed-up ("" when it was quiet)."""
    if not (busy := comparison.busy):
        return ""
    seen = ", ".join(f"`{n}` {s:.3f} s" for n, s in
                     comparison.to_frame()["latency_s"].dropna().items()) if comparison.records else ""
    return (f"- **Measured under contention** ({busy}): no speed-up here can be believed, so none is stated. "
            f"Seen (not a result): median latency {seen}. Rerun on a quiet host (`lab.host.watch()` says when it "
            "is), with more repeats.")


def _calls(calls: int, steps: int) -> str:
    """"3 denoiser calls for 2 steps" where the scheduler evaluates the denoiser more often than once a step."""
    return f"{calls} steps" if calls == steps else f"{calls} denoiser calls for {steps} steps"


def _said(verdict) -> str:
    return f"{_pct(verdict.speedup)}, interval {verdict.low:.2f}–{verdict.high:.2f}×"
def _present(value) -> bool:
    """A number that is there (not None, not NaN)."""
    return value is not None and value == value


def compare(comparison, families: Mapping[str, Sequence[str]] | None = None) -> str:
    """Fastest recipe, best per family, what costs time, what saves memory, what moved the pictures.

    A speed-up is stated only where its verdict (``Comparison.verdicts``) is ``faster`` or ``slower``.
    """
    from .experiments import successful

    frame = comparison.to_frame()
    base = comparison.baseline
    ok = successful(frame).drop(index=base, errors="ignore").dropna(subset=["speedup"])
    if ok.empty:
        return f"- No recipe besides `{base}` ran here."
    verdicts = comparison.verdicts()
    faster = {n: v for n, v in verdicts.items() if v.verdict == "faster" and n in ok.index}
    lines = [line] if (line := contention(comparison)) else []
    if faster:
        best = max(faster, key=lambda n: faster[n].speedup)
        lines.append(f"- Fastest here: **`{best}`**, {faster[best].speedup:.2f}× the speed of `{base}` (95 % interval "
                     f"{faster[best].low:.2f}–{faster[best].high:.2f}; {frame.loc[base, 'latency_s']:.3f} s → "
                     f"{ok.loc[best, 'latency_s']:.3f} s per image).")
    elif not comparison.busy:
        lines.append(f"- No recipe is distinguishably faster than `{base}` here.")
    same = [n for n, v in verdicts.items() if v.verdict == "not distinguishable" and n in ok.index]
    if same:
        lines.append(f"- Not distinguishable from `{base}` (interval contains 1, or within 10 %): "
                     + ", ".join(f"`{n}`" for n in same) + ".")
    for family, names in (families or {}).items():
        judged = {n: verdicts[n] for n in names if n in ok.index and n in verdicts and verdicts[n].distinguishable}
        if judged:
            lines.append(f"- {family}: " + ", ".join(f"`{n}` {_said(v)}" for n, v in
                                                     sorted(judged.items(), key=lambda kv: -kv[1].speedup)))
    slower = {n: v for n, v in verdicts.items() if v.verdict == "slower" and n in ok.index}
    if slower:
        lines.append("- Slower than the baseline here: " + ", ".join(
            f"`{n}` ({_said(v)})" for n, v in sorted(slower.items(), key=lambda kv: kv[1].speedup)) + ".")
    if "weight_mb" in ok and frame.loc[base, "weight_mb"]:
        lightest = ok["weight_mb"].idxmin()
        ratio = frame.loc[base, "weight_mb"] / ok.loc[lightest, "weight_mb"]
        if ratio > 1.05:
            v = verdicts.get(lightest)
            speed = (f"{_said(v)} speed" if v.distinguishable else f"speed {v.verdict}") if v else "speed unmatched"
            lines.append(f"- Smallest weights: `{lightest}`, {ratio:.1f}× fewer bytes than `{base}` ({speed}).")
    if ok["ssim"].notna().any():
        worst = ok["ssim"].idxmin()
        lines.append(f"- Pictures moved most with `{worst}` (SSIM {ok.loc[worst, 'ssim']:.3f} against `{base}`); "
                     f"{int((ok['ssim'] > 0.99).sum())} of {len(ok)} recipes kept SSIM above 0.99.")
    if "cache_skipped" in ok and ok["cache_skipped"].notna().any():
        cached = ok[ok["cache_skipped"].notna()]

        def speed(name) -> str:  # a speed change only where its verdict allows one
            v = verdicts.get(name)
            return f"{_pct(v.speedup)} speed" if v is not None and v.distinguishable else f"speed {v.verdict if v else 'unmatched'}"

        lines.append("- Caches: " + "; ".join(
            f"`{n}` skipped {row['cache_skipped']:.0%} of its evaluations ({speed(n)}"
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
    if line := contention(comparison):
        return line + " Interactions between parts cannot be judged from these runs either."
    lines = []
    for combo, row in table.iterrows():
        ratio = row["gain_ratio"]
        verdict = ("multiplied as if independent" if abs(ratio - 1) <= INDEPENDENT_BAND else
                   "overlapped (less than the product)" if ratio < 1 else "did better than the product")
        lines.append(f"- `{combo}`: measured {row['measured_speedup']:.2f}× against {row['expected_speedup']:.2f}× "
                     f"expected from its parts (gain ratio {ratio:.2f}): the parts {verdict}.")
    faster = {n: v for n, v in comparison.verdicts().items() if v.verdict == "faster"
              and n in successful(comparison.to_frame()).index}
    if faster:
        fastest = max(faster, key=lambda n: faster[n].speedup)
        lines.append(f"- Fastest of everything measured here: `{fastest}` ({faster[fastest].speedup:.2f}×, interval "
                     f"{faster[fastest].low:.2f}–{faster[fastest].high:.2f}).")
    else:
        lines.append("- Nothing measured here is distinguishably faster than the baseline.")
    return "\n".join(lines)


def verify(comparison, quality, chosen: str) -> str:
    """Whether the chosen recipe is faster beyond the noise and passes the gate; how the others did."""
    frame = comparison.to_frame()
    summary = quality.summary()
    verdicts = comparison.verdicts()
    lines = [line] if (line := contention(comparison)) else []
    for recipe in [chosen, *[r for r in frame.index if r not in (chosen, comparison.baseline)]]:
        if recipe not in frame.index or frame.loc[recipe, "ok"] == 0 or recipe not in verdicts:
            continue
        v = verdicts[recipe]
        repeats = min((r.latency.n for r in comparison.records if r.recipe == recipe and r.status == "ok"), default=0)
        speed = ("one repeat per run: no spread measured, so no speed-up is claimed" if repeats < 2 else
                 v.text() if v.verdict != "untrusted" else "speed-up untrusted (host busy)")
        gate = summary.loc[recipe, "verdict"] if recipe in summary.index else "not gated"
        extra = ""
        if recipe in summary.index and "adherence" in summary:
            extra = (f", adherence {summary.loc[recipe, 'adherence']:.2f} "
                     f"(baseline {summary.loc[recipe, 'baseline_adherence']:.2f})")
        lines.append(f"- `{recipe}`{' (chosen)' if recipe == chosen else ''}: {speed}; quality gate "
                     f"**{gate}** (min SSIM {summary.loc[recipe, 'min_ssim']:.3f}{extra})"
                     if recipe in summary.index else f"- `{recipe}`: {speed}; not gated")
    return "\n".join(lines)


def mixed(comparison, front) -> str:
    """The mixed-precision search: how many plans (the baseline not counted) are on the Pareto front, and which
    of them is distinguishably faster than the baseline."""
    plans = [r for r in dict.fromkeys(r.recipe for r in comparison.records) if r != comparison.baseline]
    on_front = [r for r in front.index if r != comparison.baseline]
    lines = [line] if (line := contention(comparison)) else []
    lines.append(f"- Mixed precision: {len(on_front)} of the {len(plans)} plans besides `{comparison.baseline}` are on "
                 "the Pareto front of latency, memory and SSIM"
                 + (f" (`{comparison.baseline}` itself is on it too)" if comparison.baseline in front.index else "") + ".")
    verdicts = comparison.verdicts()
    faster = [r for r in on_front if r in verdicts and verdicts[r].verdict == "faster"]
    if faster:
        best = max(faster, key=lambda r: verdicts[r].speedup)
        lines.append(f"- Fastest plan on the front: `{best}`, {verdicts[best].text()}.")
    elif not comparison.busy:
        lines.append(f"- No plan on the front is distinguishably faster than `{comparison.baseline}` here: the front is "
                     "made by memory and SSIM.")
    return "\n".join(lines)


def lora(unfused, fused, tolerance: float = 0.05) -> str:
    """What fusing the LoRA did to the time per call in this run (seconds, or two ``CaseResult``s to judge
    the difference against its spread and the host's load)."""
    if hasattr(unfused, "latency"):
        from .host import HostLoad
        from .stats import judge

        busy = HostLoad.combine([c.host for c in (unfused, fused) if c.host and c.host.busy])
        v = judge([(unfused.latency, fused.latency)], busy="; ".join(busy.reasons) if busy else "")
        head = f"- LoRA: unfused {unfused.latency.median:.3f} s, fused {fused.latency.median:.3f} s per call: "
        if v.verdict == "faster":
            return head + f"fusing saves time ({v.text()}): it removes the LoRA's extra matmuls from every call."
        if v.verdict == "slower":
            return head + f"fused is slower ({v.text()}): rerun before reading it as a cost."
        return head + v.text() + "."
    unfused_s, fused_s = unfused, fused
    ratio = fused_s / unfused_s
    if abs(ratio - 1) <= tolerance:
        said = "the same time within 5 %"
    elif ratio < 1:
        said = f"{1 - ratio:.0%} less time: fusing removes the LoRA's extra matmuls from every call"
    else:
        said = (f"{ratio - 1:.0%} more time: on a model this small the difference is noise-sized, "
                "re-run with more repeats before reading it as a cost")
    return f"- LoRA: unfused {unfused_s:.3f} s, fused {fused_s:.3f} s per call: {said}."


# the fallback's picture is "lost" below this share of the unconstrained call's adherence
KEPT_ADHERENCE = 0.7


def fallback(result, image=None, reference=None) -> str:
    """What the out-of-memory fallback had to give up in this run, and whether its picture survived.

    With ``image`` (what the fallback returned) and ``reference`` (the same case without a budget) on a
    shape-scene prompt, both are scored for adherence: a call that finished but lost the picture is a failure.
    """
    if not result.actions:
        return "- The out-of-memory fallback was not needed: the first call fitted."
    size = result.case.height or "native"
    budget = f" under a {result.budget_mb:.2f} MB budget" if result.budget_mb else ""
    line = (f"- Out-of-memory fallback{budget}: {len(result.errors)} out-of-memory error(s), then "
            + " → ".join(f"`{a}`" for a in result.actions) + f"; the image finally came at {size} px.")
    if image is None:
        return line
    from .shapes import adherence, is_shape_caption

    if not is_shape_caption(result.case.prompt):
        return line + " No detector scores this prompt: look at the image before calling the fallback a success."
    got = adherence(image, result.case.prompt).overall
    if reference is None:
        return line + f" Its adherence to the prompt: {got:.2f}."
    want = adherence(reference, result.case.prompt).overall
    if got < KEPT_ADHERENCE * want:
        return line + (f" **The picture was lost**: adherence {got:.2f} against {want:.2f} without the budget. The "
                       "call finished, but what it drew is not the prompt: at this size the model makes noise, so "
                       "report an out-of-memory failure rather than this image.")
    return line + f" The picture survived: adherence {got:.2f} against {want:.2f} without the budget."


def throughput(sweep) -> str:
    """Which batch gave the most images per second in this sweep, against one image per call."""
    best = sweep.best()
    if best is None:
        return "- No batch size of the sweep ran: no throughput to report."
    from .throughput import batch_gain

    single = next((p for p in sweep.ok() if p.images == 1), None)
    versus = ""
    if single and best is not single:  # a gain is stated only with a verdict that it is one
        v = batch_gain(single, best)
        versus = (f", {v.speedup:.2f}× one image per call per image (interval {v.low:.2f}–{v.high:.2f})"
                  if v.verdict == "faster" else f"; against one image per call: {v.text()}")
    return (f"- Throughput: **{best.prompts} prompts × {best.images_per_prompt} images** per call gave the most, "
            f"{best.images_per_s:.3g} images/s (IQR {best.images_per_s_iqr:.2g}){versus}, at "
            f"{best.latency.median:.2f} s per call and {best.peak_mem_mb:.0f} MiB peak.")


def runtimes(comparison, recommendation) -> str:
    """What the side-by-side of CPU runtimes measured and which recipe the recommender took from it."""
    frame = comparison.to_frame()
    ran = frame[frame["ok"] > 0]
    skipped = [f"`{r}` ({row['reason'][:90]})" for r, row in frame.iterrows() if row["ok"] == 0]
    faster = {n: v for n, v in comparison.verdicts().items() if v.verdict == "faster" and n in ran.index}
    lines = [line] if (line := contention(comparison)) else []
    if not len(ran):
        lines.append("- No recipe of the runtime comparison ran here.")
    elif faster:
        best = max(faster, key=lambda n: faster[n].speedup)
        lines.append(f"- CPU runtimes: fastest here `{best}`, {faster[best].text()}; the recommender, given this run, "
                     f"picks **`{recommendation.recipe}`**.")
    else:
        lines.append(f"- CPU runtimes: none is distinguishably faster than `{comparison.baseline}` here; the "
                     f"recommender, given this run, picks **`{recommendation.recipe}`**.")
    if skipped:
        lines.append("- Not measured here: " + "; ".join(skipped) + ".")
    return "\n".join(lines)
