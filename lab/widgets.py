"""``Workbench``: an ipywidgets panel to run a baseline and a recipe side by side from a notebook."""

from __future__ import annotations

from .cases import Case


class Workbench:
    """Model, recipes (multi-select from the catalog), prompt, steps, resolution and seed; a Run button
    benchmarks the baseline and the chosen recipe and shows the latency table, both images and the
    stage plot, with a progress bar during the run. ``display(wb.panel)`` shows it; tests drive it by
    setting the widgets' values and calling ``wb.run_button.click()``."""

    def __init__(self, models: tuple[str, ...] = ("tiny", "tiny-sdxl", "sd15-arch"), baseline: str = "fp32",
                 device: str = "auto", repeats: int = 2):
        import ipywidgets as w

        from . import recipes

        self.device, self.repeats, self.baseline = device, repeats, baseline
        self.model = w.Dropdown(options=list(models), value=models[0], description="model")
        self.recipes = w.SelectMultiple(options=recipes.names(), value=("bf16",), rows=8, description="recipes")
        self.prompt = w.Text(value="a photo of an astronaut riding a horse on mars", description="prompt",
                             layout=w.Layout(width="60%"))
        self.steps = w.IntSlider(value=8, min=1, max=50, description="steps")
        self.size = w.Dropdown(options=[0, 64, 128, 256, 512, 768, 1024], value=0, description="size (0=native)")
        self.seed = w.IntText(value=0, description="seed")
        self.run_button = w.Button(description="Run", button_style="primary")
        self.progress = w.IntProgress(value=0, min=0, max=4, description="progress")
        self.status = w.HTML()
        self.table_out, self.images_out, self.plot_out = w.Output(), w.Output(), w.Output()
        self.run_button.on_click(self._on_click)
        self.panel = w.VBox([w.HBox([self.model, self.seed]), self.recipes, self.prompt,
                             w.HBox([self.steps, self.size]), w.HBox([self.run_button, self.progress]), self.status,
                             self.table_out, self.images_out, self.plot_out])
        self.result = None  # the last run's table: one row per recipe (DataFrame)
        self.images: dict[str, object] = {}
        self.error: str | None = None

    def recipe(self) -> str:
        return "+".join(self.recipes.value) or self.baseline

    def _on_click(self, _button) -> None:
        self.error = None
        try:
            self.run()
        except Exception as err:  # shown in the panel: a click never raises into the event loop
            self.error = f"{type(err).__name__}: {err}"
            self.status.value = f"<b style='color:#b00'>{self.error}</b>"

    def run(self) -> None:
        """Benchmark baseline and recipe on the current settings and fill the outputs."""
        import tempfile

        import matplotlib.pyplot as plt
        import pandas as pd
        from PIL import Image

        from . import plots
        from .benchmarking import benchmark
        from .prepare import load_pipeline
        from .recipes import parse

        recipe = self.recipe()
        parse(recipe)  # bad combinations are reported before any loading
        size = self.size.value or None
        case = Case(self.prompt.value, steps=self.steps.value, height=size, width=size, seed=self.seed.value,
                    name="workbench")
        self.progress.value, self.status.value = 0, f"running {self.baseline} and {recipe} ..."
        rows, results = [], {}
        for label in (self.baseline, recipe):
            pipe = load_pipeline(self.model.value, device=self.device)
            plan = parse(label)
            plan.apply(pipe, [case])
            self.progress.value += 1
            with tempfile.TemporaryDirectory() as tmp:
                res = benchmark(pipe, case.with_overrides(**plan.case_overrides()), warmup=1, repeats=self.repeats,
                                progress=False, image_dir=tmp)
                c = res.cases[0]
                if c.error:
                    raise RuntimeError(f"{label}: {c.error}")
                with Image.open(c.image) as img:
                    self.images[label] = img.copy()
            self.progress.value += 1
            results[label] = res
            rows.append({"recipe": label, "median_s": c.latency.median, "iqr_s": c.latency.iqr,
                         "unet_s": c.stages.unet, "vae_decode_s": c.stages.vae_decode, "peak_rss_mb": c.peak_rss_mb})
        self.result = pd.DataFrame(rows).set_index("recipe")
        self.result["speedup"] = self.result["median_s"].iloc[0] / self.result["median_s"]
        for out in (self.table_out, self.images_out, self.plot_out):
            out.outputs = ()
        # append_display_data renders now, with or without a live kernel (``with out:`` needs one)
        self.table_out.append_display_data(self.result.round(3))
        fig, axes = plt.subplots(1, 2, figsize=(6, 3), layout="constrained")
        for ax, (label, image) in zip(axes, self.images.items()):
            ax.imshow(image)
            ax.set_title(label, fontsize=8)
            ax.axis("off")
        self.images_out.append_display_data(fig)
        plt.close(fig)
        fig = plots.plot_stages(results[recipe])
        self.plot_out.append_display_data(fig)
        plt.close(fig)
        self.status.value = f"done: {recipe} is {self.result['speedup'].iloc[1]:.2f}x the baseline"
