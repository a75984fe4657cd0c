"""``Workbench``: an ipywidgets panel to run a baseline and a recipe side by side from a notebook."""

from __future__ import annotations

import html

from .cases import Case
from .host import HostLoad
from .stats import judge

FREE_FORM_PROMPT = "a photo of an astronaut riding a horse on mars"


def default_prompt(model: str) -> str:
    """A prompt the model can draw: a held-out shape scene for a model trained on them (``tiny``: adherence 1.0
    at 20 steps, seed 0; ``tiny-flux``), a free-form one for anything else."""
    from .cases import default_prompts

    if default_prompts(model) == "shapes":
        from .shapes import held_out_prompts

        return held_out_prompts(1)[0]
    return FREE_FORM_PROMPT


def _listed(names: list[str], first: str = "bf16") -> list[str]:
    """The recipe list with the pre-selected one on top: a browser scrolls a list box to its selected option."""
    return [first, *(n for n in names if n != first)] if first in names else list(names)


def _png(fig):
    """A figure as a PNG display object: renders the same with or without a live kernel."""
    import io

    from IPython.display import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return Image(data=buf.getvalue(), format="png")


class Workbench:
    """Model, recipes (multi-select from the catalog), prompt, steps, resolution and seed; a Run button
    benchmarks the baseline and the chosen recipe and shows the latency table, both images and the
    stage plot (baseline and recipe, both labelled), with a progress bar during the run.

    Evaluate ``wb`` (or ``display(wb)``) in a notebook to show the panel. Every run clears the previous
    results first, so after an error nothing stale stays on screen. Tests drive it by setting the
    widgets' values and calling ``wb.run_button.click()``."""

    def __init__(self, models: tuple[str, ...] = ("tiny", "tiny-sdxl", "sd15-arch"), baseline: str = "fp32",
                 device: str = "auto", repeats: int = 2, steps: int = 20):
        import ipywidgets as w

        from . import recipes

        self.device, self.repeats, self.baseline = device, repeats, baseline
        style, wide = {"description_width": "initial"}, w.Layout(width="auto")
        self.model = w.Dropdown(options=list(models), value=models[0], description="model", style=style)
        self.recipes = w.SelectMultiple(options=_listed(recipes.fitting(recipes.names(), models[0])), value=("bf16",),
                                        rows=8, description="recipes", style=style)
        self.prompt = w.Text(value=default_prompt(models[0]), description="prompt", style=style,
                             layout=w.Layout(width="95%"))
        self.steps = w.IntSlider(value=steps, min=1, max=50, description="steps", style=style)
        self.size = w.Dropdown(options=[0, 64, 128, 256, 512, 768, 1024], value=0, description="size (0 = native)",
                               style=style, layout=wide)
        self.seed = w.IntText(value=0, description="seed", style=style, layout=w.Layout(width="140px"))
        self.run_button = w.Button(description="Run", button_style="primary")
        self.progress = w.IntProgress(value=0, min=0, max=4, description="progress", style=style)
        self.status = w.HTML()
        self.table_out, self.images_out, self.plot_out = w.Output(), w.Output(), w.Output()
        self.run_button.on_click(self._on_click)
        self.model.observe(self._on_model, names="value")
        self.panel = w.VBox([w.HBox([self.model, self.seed]), self.recipes, self.prompt,
                             w.HBox([self.steps, self.size]), w.HBox([self.run_button, self.progress]), self.status,
                             self.table_out, self.images_out, self.plot_out])
        self.result = None  # the last run's table: one row per recipe (DataFrame)
        self.images: dict[str, object] = {}
        self.figures: dict[str, object] = {}  # the last run's figures (images, stages), for inspection
        self.error: str | None = None
        self.verdict = None  # the last run's lab.stats.Verdict: the speed-up only when it can be believed

    def _repr_mimebundle_(self, **kwargs):
        """Display as the panel itself (not ``<Workbench at 0x...>``)."""
        return self.panel._repr_mimebundle_(**kwargs)

    def recipe(self) -> str:
        """The chosen recipes joined with ``+`` (the baseline when none is selected)."""
        return "+".join(self.recipes.value) or self.baseline

    def _on_model(self, change) -> None:
        from . import recipes

        # keep a prompt the new model can draw unless the user typed their own
        if self.prompt.value in (default_prompt(change["old"]), ""):
            self.prompt.value = default_prompt(change["new"])
        # list only the recipes this model's denoiser can take (no UNet-only ones for a transformer)
        chosen = self.recipes.value
        self.recipes.options = _listed(recipes.fitting(recipes.names(), change["new"]))
        self.recipes.value = tuple(r for r in chosen if r in self.recipes.options)

    def clear(self) -> None:
        """Forget and hide the previous run: table, images, plot, status."""
        for out in (self.table_out, self.images_out, self.plot_out):
            out.outputs = ()
        self.result, self.images, self.figures, self.error = None, {}, {}, None
        self.verdict = None
        self.progress.value, self.status.value = 0, ""
        self.progress.bar_style = ""

    def _on_click(self, _button) -> None:
        try:  # run() starts by clearing the previous run
            self.run()
        except Exception as err:  # shown in the panel: a click never raises into the event loop
            for out in (self.table_out, self.images_out, self.plot_out):
                out.outputs = ()
            self.result, self.images, self.figures = None, {}, {}
            self.error = f"{type(err).__name__}: {err}"
            self.status.value = f"<b style='color:#b00'>{html.escape(self.error)}</b>"
            # a stopped run must not look half done: the bar goes empty and red
            self.progress.value, self.progress.bar_style = 0, "danger"

    def run(self) -> None:
        """Benchmark baseline and recipe on the current settings and fill the outputs."""
        import tempfile

        import matplotlib.pyplot as plt
        import pandas as pd
        from PIL import Image

        from . import plots
        from ._checks import LabError
        from .benchmarking import benchmark
        from .prepare import prepare
        from .recipes import parse
        from .shapes import adherence, is_shape_caption

        self.clear()
        recipe = self.recipe()
        parse(recipe)  # bad combinations are reported before any loading
        size = self.size.value or None
        case = Case(self.prompt.value, steps=self.steps.value, height=size, width=size, seed=self.seed.value,
                    name="workbench")
        self.status.value = html.escape(f"running {self.baseline} and {recipe} ...")
        rows, results, images = [], {}, {}
        for label in (self.baseline, recipe):
            prepared = prepare(self.model.value, label, device=self.device, cases=[case], strict=False)
            if prepared.skipped:  # checked against this machine: say why instead of a misleading run
                raise LabError(f"{label} cannot apply here: {prepared.skipped}")
            self.progress.value += 1
            with tempfile.TemporaryDirectory() as tmp:
                res = benchmark(prepared.pipe, prepared.cases[0], warmup=1, repeats=self.repeats, progress=False,
                                image_dir=tmp)
                c = res.cases[0]
                if c.error:
                    raise RuntimeError(f"{label}: {c.error}")
                with Image.open(c.image) as img:
                    images[label] = img.copy()
            self.progress.value += 1
            results[label] = res
            row = {"recipe": label, "steps": c.case.steps, "median_s": c.latency.median, "iqr_s": c.latency.iqr,
                   "denoiser_s": c.stages.denoiser, "vae_decode_s": c.stages.vae_decode, "peak_rss_mb": c.peak_rss_mb}
            if is_shape_caption(case.prompt):
                row["adherence"] = adherence(images[label], case.prompt).overall
            rows.append(row)
        self.images = images
        self.result = pd.DataFrame(rows).set_index("recipe")
        self.result["speedup"] = self.result["median_s"].iloc[0] / self.result["median_s"]
        base, cand = (results[label].cases[0] for label in (self.baseline, recipe))
        busy = HostLoad.combine([c.host for c in (base, cand) if c.host and c.host.busy])
        self.verdict = judge([(base.latency, cand.latency)], busy="; ".join(busy.reasons) if busy else "")
        self.result["verdict"] = ["baseline", self.verdict.verdict]
        # short, so the table fits the panel; the status line says why when it is busy
        self.result["host"] = [("busy" if c.host.busy else "quiet") if c.host else "" for c in (base, cand)]
        # append_display_data renders now, with or without a live kernel (``with out:`` needs one)
        self.table_out.append_display_data(self.result.round(3))
        self.figures = {
            "images": plots.plot_images(list(images.values()), [f"{k} ({self.result.loc[k, 'median_s']:.2f} s)"
                                                                for k in images], ncols=2),
            "stages": plots.plot_stage_comparison(results),
        }
        for out, fig in zip((self.images_out, self.plot_out), self.figures.values()):
            out.append_display_data(_png(fig))
            plt.close(fig)
        self.progress.bar_style = "success"
        self.status.value = html.escape(f"done: {recipe} against {self.baseline}: {self.verdict.text()} "
                                        f"({self.result['median_s'].iloc[1]:.3f} s against "
                                        f"{self.result['median_s'].iloc[0]:.3f} s, {self.repeats} repeats)")
