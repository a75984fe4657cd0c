"""``report()``: a self-contained Markdown + HTML before/after report of a comparison (seed 000 §7)."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

from ._checks import LabError, writable_dir
from .quality import QualityReport, QualityThresholds, evaluate
from .results import atomic_write_text


RANDOM_WEIGHTS = ("{model} has random weights: its images' SSIM and PSNR against the baseline mean nothing (the "
                  "trajectories diverge), so the quality gate judges a recipe by its final latent against the "
                  "baseline's instead (`trajectory_rel_err`, lab.trajectory); `fidelity_rel_err` (the first "
                  "denoising step against the baseline's) is in the recipe table too.")


def choose(comparison, quality: QualityReport) -> str:
    """The fastest recipe whose every image passes the quality gate and which is distinguishably faster than the
    baseline (``Comparison.verdicts``); the baseline if none is (``choice_note`` says why)."""
    frame = comparison.to_frame()
    summary = quality.summary()
    verdicts = comparison.verdicts()
    passing = [r for r in frame.index if r != comparison.baseline and r in summary.index
               and summary.loc[r, "verdict"] == "pass" and r in verdicts and verdicts[r].verdict == "faster"]
    if not passing:
        return comparison.baseline
    return min(passing, key=lambda r: frame.loc[r, "latency_s"])


def choice_note(comparison, chosen: str) -> str:
    """Why the report's "after" is what it is, in one sentence that claims no speed-up the runs cannot support."""
    if busy := comparison.busy:
        return (f"Measured under contention ({busy}): no speed-up can be believed, so none is claimed and the "
                "baseline stays the choice; rerun on a quiet host.")
    if chosen == comparison.baseline:
        return "No recipe passed the quality gate and was distinguishably faster than the baseline."
    v = comparison.verdict(chosen)
    return f"`{chosen}`: {v.text()}." if v else ""


def before_after(comparison, recipe: str, quality: QualityReport):
    """Seed 000 §7's table: latency, peak memory, CPU %, weights, quality; baseline | chosen | change."""
    import pandas as pd

    frame = comparison.to_frame()
    b, a = frame.loc[comparison.baseline], frame.loc[recipe]

    def cpu(name):
        values = [r.cpu_percent for r in comparison.records if r.recipe == name and r.cpu_percent is not None]
        return sum(values) / len(values) if values else float("nan")

    summary = quality.summary()
    q = summary.loc[recipe] if recipe in summary.index else None
    # one definition (Comparison.to_frame): the latency change is the speed-up read the other way
    change = f"{1 / a['speedup'] - 1:+.1%}" if a["speedup"] else ""
    verdict = comparison.verdict(recipe) if recipe != comparison.baseline else None
    said = f"{a['speedup']:.2f}x" if verdict is None or verdict.distinguishable else verdict.verdict
    rows = [
        ("latency (s, geo. mean of run medians)", b["latency_s"], a["latency_s"], change),
        ("latency spread (IQR, s)", b["latency_iqr_s"], a["latency_iqr_s"], ""),
        ("speed-up (baseline ÷ recipe, matched runs)", 1.0, a["speedup"], said),
        ("peak memory (MB)", b["peak_mem_mb"], a["peak_mem_mb"], f"{a['peak_mem_mb'] / b['peak_mem_mb'] - 1:+.1%}"),
        ("weights (MB)", b["weight_mb"], a["weight_mb"], f"{a['weight_mb'] / b['weight_mb'] - 1:+.1%}"),
        ("CPU % (100 = one core)", cpu(comparison.baseline), cpu(recipe), ""),
        energy_row(frame, comparison, recipe),
        ("SSIM vs baseline (mean)", 1.0, q["mean_ssim"] if q is not None else 1.0, ""),
        ("PSNR vs baseline (min, dB)", float("inf"), q["min_psnr"] if q is not None else float("inf"), ""),
        ("runs with an outlier repeat", b.get("outliers", 0), a.get("outliers", 0), ""),
    ]
    return pd.DataFrame(rows, columns=["metric", comparison.baseline, recipe, "change"]).set_index("metric")


def energy_row(frame, comparison, recipe: str) -> tuple:
    """Energy per image (J), baseline and chosen, from NVML or RAPL; where unreadable the change column says why."""
    def joules(name):
        value = frame.loc[name].get("energy_j_per_image") if "energy_j_per_image" in frame else None
        return float(value) if value is not None and value == value else float("nan")

    b, a = joules(comparison.baseline), joules(recipe)
    if b == b and a == a:
        return ("energy per image (J)", b, a, f"{a / b - 1:+.1%}")
    notes = comparison.energy_notes()
    return ("energy per image (J)", b, a, "not measured: " + ("; ".join(notes) or "no energy recorded"))


def recipe_yaml(text: str) -> str:
    """The chosen recipe as YAML: the string, each part with what it does, generation overrides."""
    import yaml

    from .recipes import parse

    plan = parse(text)
    data = {"recipe": text, "parts": [{"name": r.name, "family": r.family, "does": r.description}
                                      for r in plan.recipes]}
    if plan.case_overrides():
        data["generation"] = plan.case_overrides()
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def outlier_notes(comparison) -> list[str]:
    """One line per run whose slowest repeat is an outlier: which run, how slow, against what median."""
    return [f"`{r.recipe}` on {r.case} (seed {r.seed}): slowest repeat {r.latency.max:.3f} s against a median of "
            f"{r.latency.median:.3f} s over {r.latency.n} repeats (limit {r.latency.outlier_limit:.3f} s); the "
            "medians above are robust to it, but the machine was disturbed: re-run to confirm"
            for r in comparison.outlier_runs()]


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def report(comparison, out: str | os.PathLike | None = None, *, recipe: str | None = None,
           thresholds: QualityThresholds | None = None) -> dict[str, Path]:
    """Write ``report.md`` and ``report.html`` (images embedded) for a comparison; returns their paths.

    Args:
        recipe: the recipe to report as "after"; default: the fastest one that passes the quality gate.
    """
    from . import plots
    from .experiments import narrow as narrow_columns

    if not any(r.recipe == comparison.baseline and r.status == "ok" for r in comparison.records):
        raise LabError(f"the comparison in {comparison.out!r} has no successful baseline run: nothing to report")
    out = writable_dir(out or comparison.out)
    quality = evaluate(comparison, thresholds)
    chosen = recipe or choose(comparison, quality)
    frame = comparison.to_frame()
    if chosen not in frame.index or frame.loc[chosen, "ok"] == 0:
        raise LabError(f"recipe {chosen!r} has no successful run in this comparison; "
                       f"choose one of: {', '.join(frame.index[frame['ok'] > 0])}")
    table = before_after(comparison, chosen, quality)
    figures = {
        "Latency": plots.plot_latency(comparison), "Speed-up": plots.plot_speedup(comparison),
        "Memory": plots.plot_memory(comparison), "Quality against speed": plots.plot_quality_vs_speed(comparison),
        "Stages": plots.plot_stage_breakdown(comparison), "Images and differences": plots.plot_diff_grid(comparison),
    }
    images = {title: _png(fig) for title, fig in figures.items()}
    env_path = Path(comparison.out) / "environment.json"
    env = json.loads(env_path.read_text()) if env_path.exists() else {}
    yaml_text = recipe_yaml(chosen)
    gate = quality.thresholds
    note = choice_note(comparison, chosen)

    md = [f"# Before / after: {comparison.model}", "",
          f"Baseline `{comparison.baseline}`, chosen `{chosen}` "
          f"({'fastest recipe passing' if recipe is None else 'as requested; quality gate'}: SSIM > {gate.ssim_min}, "
          f"PSNR > {gate.psnr_min} dB).", "", note, "",
          *([RANDOM_WEIGHTS.format(model=comparison.model), ""] if comparison.random_weights else []),
          "## Before / after", "", table.round(4).to_markdown(), "",
          "## Chosen recipe", "", "```yaml", yaml_text.rstrip(), "```", "", "## Quality gate", "",
          quality.summary().round(4).to_markdown() if quality.images else "(no images besides the baseline)", ""]
    if quality.skipped_metrics:
        md += ["Not computed: " + "; ".join(f"{k} ({v})" for k, v in quality.skipped_metrics.items()), ""]
    notes = outlier_notes(comparison)
    if notes:
        md += ["## Outliers", ""] + [f"- {n}" for n in notes] + [""]
    narrow = narrow_columns(frame)
    md += ["## All recipes", "", "Speed-up is baseline ÷ recipe latency over matched runs (geometric mean); "
           "every column is in *All recipes, every column* below.", "", narrow.round(3).to_markdown(), ""]
    for title, data in images.items():
        md += [f"## {title}", "", f"![{title}](data:image/png;base64,{data})", ""]
    md += ["## All recipes, every column", "", frame.round(4).to_markdown(), ""]
    md += ["## Environment", "", "```json", json.dumps(env, indent=2), "```", ""]

    def table_html(df) -> str:
        return df.round(4).to_html(border=0, classes="t", na_rep="")

    body = [f"<h1>Before / after: {html.escape(comparison.model)}</h1>",
            f"<p>Baseline <code>{html.escape(comparison.baseline)}</code>, chosen <code>{html.escape(chosen)}</code> "
            f"(quality gate: SSIM &gt; {gate.ssim_min}, PSNR &gt; {gate.psnr_min} dB).</p>",
            f"<p><b>{html.escape(note)}</b></p>",
            *([f"<p><b>{html.escape(RANDOM_WEIGHTS.format(model=comparison.model))}</b></p>"]
              if comparison.random_weights else []),
            "<h2>Before / after</h2>", table_html(table), "<h2>Chosen recipe</h2>",
            f"<pre>{html.escape(yaml_text)}</pre>", "<h2>Quality gate</h2>",
            table_html(quality.summary()) if quality.images else "<p>(no images besides the baseline)</p>",
            *([("<h2>Outliers</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")]
              if notes else []),
            "<h2>All recipes</h2>", "<p>Speed-up is baseline ÷ recipe latency over matched runs (geometric mean).</p>",
            table_html(narrow),
            "<details><summary>every column</summary><div class='wide'>", table_html(frame), "</div></details>"]
    for title, data in images.items():
        body += [f"<h2>{html.escape(title)}</h2>", f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">']
    body += ["<h2>Environment</h2>", f"<pre>{html.escape(json.dumps(env, indent=2))}</pre>"]
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>diffusion-lab report</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table.t{border-collapse:collapse}"
            "table.t td,table.t th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
            "img{max-width:100%}.wide{overflow-x:auto}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    paths = {"markdown": out / "report.md", "html": out / "report.html"}
    atomic_write_text(paths["markdown"], "\n".join(md))
    atomic_write_text(paths["html"], page)
    return paths
