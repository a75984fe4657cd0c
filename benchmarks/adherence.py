"""Prompt adherence of the embedded trained ``tiny`` and ``tiny-flux`` models, and the detector's own accuracy.

Generates one image per held-out prompt (captions training never saw) for each configuration
and scores them with ``lab.adherence``; also scores generator ground truth (the detector's
accuracy), clean and degraded (blurred, noisy) as generated images are, and after a round trip
through the trained VAE (the ceiling for anything the UNet draws in its latent space). Scores are
also grouped by colour and by colour × background, to locate a weakness.

Usage: python benchmarks/adherence.py [--prompts 50] [--only tiny-flux] [--out runs/adherence]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lab

ROOT = Path(__file__).resolve().parents[1]

# name -> (model, scheduler, steps, recipe[, extra call arguments])
CONFIGS = {
    "trained, PNDM 30 steps (default)": ("tiny", None, 30, None),
    "trained, DDIM 4 steps": ("tiny", "ddim", 4, None),
    "trained, 30 steps, quanto int8 UNet weights": ("tiny", None, 30, "quanto-unet-int8w"),
    "trained, 30 steps, quanto int4 UNet weights": ("tiny", None, 30, "quanto-unet-int4w"),
    "random weights (tiny-random), 30 steps": ("tiny-random", None, 30, None),
    # FluxPipeline's default 28 Euler steps; tiny-flux has no guidance embedding, so guidance_scale does
    # nothing and the default call has no CFG; true CFG needs a negative prompt.
    "tiny-flux, Euler 28 steps (default)": ("tiny-flux", None, 28, None),
    "tiny-flux, Euler 28 steps, true CFG 4 (negative_prompt='')": (
        "tiny-flux", None, 28, None, {"negative_prompt": "", "true_cfg_scale": 4.0}),
    "tiny-flux, Euler 8 steps": ("tiny-flux", None, 8, None),
}


def generate(config: tuple, prompts: list[str], guidance: float):
    import torch

    model, scheduler, steps, recipe, *extra = config
    pipe = lab.load_pipeline(model, device="cpu", scheduler=scheduler, recipe=recipe)
    generators = [torch.Generator("cpu").manual_seed(i) for i in range(len(prompts))]
    t0 = time.perf_counter()
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators,
                  height=64, width=64, **(extra[0] if extra else {})).images
    return images, time.perf_counter() - t0


def degraded_ground_truth(n: int, seed: int):
    """Generator images blurred and noised, roughly as soft as the trained model's output."""
    import numpy as np
    from PIL import Image, ImageFilter

    images, captions, _ = lab.shapes.sample(seed, n, split="all")
    rng = np.random.default_rng(seed)
    out = []
    for img in images:
        soft = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float64)
        out.append(np.clip(soft + rng.normal(0, 12, soft.shape), 0, 255).astype(np.uint8))
    return out, captions


def vae_round_trip(images, batch: int = 100) -> list:
    """Ground-truth images encoded and decoded by the trained ``tiny`` VAE (latent means, no sampling)."""
    import numpy as np
    import torch

    vae = lab.load_pipeline("tiny", device="cpu").vae
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(np.asarray(images[start:start + batch])).permute(0, 3, 1, 2).float() / 127.5 - 1
            y = vae.decode(vae.encode(x).latent_dist.mean).sample
            out += list(((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return out


def read_back(image) -> str:
    """What the detector sees in ``image``, written as a caption of the grammar."""
    found = lab.shapes.detect(image)
    if not found.objects:
        return f"no shape, {found.background} background"
    return lab.shapes.Scene(found.background, found.objects).caption()


def grouped(prompts: list[str], overall: list[float]) -> tuple[dict[str, list], dict[str, list]]:
    """Mean overall adherence of the prompts that name each colour, and each colour/background pair,
    with how many prompts each mean is over."""
    colours: dict[str, list[float]] = {}
    pairs: dict[str, list[float]] = {}
    for prompt, score in zip(prompts, overall):
        scene = lab.shapes.parse_caption(prompt)
        for colour in {o.colour for o in scene.objects}:
            colours.setdefault(colour, []).append(score)
            pairs.setdefault(f"{colour}/{scene.background}", []).append(score)

    def mean(groups: dict[str, list[float]]) -> dict[str, list]:
        return {k: [round(sum(v) / len(v), 3), len(v)] for k, v in sorted(groups.items())}

    return mean(colours), mean(pairs)


def record(results: dict, name: str, report, prompts: list[str]) -> None:
    """Per attribute, per image, by colour and by colour/background, under ``name``."""
    per_image = [round(x, 3) for x in report.to_frame()["overall"]]
    results[name] = results.get(name, {}) | report.per_attribute()
    results[f"{name} per image"] = per_image
    results[f"{name} by colour"], results[f"{name} by colour and background"] = grouped(prompts, per_image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=50, help="held-out prompts per configuration")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--detector-images", type=int, default=1000)
    parser.add_argument("--only", default="", help="run only the configurations whose name contains this")
    parser.add_argument("--out", default=str(ROOT / "runs" / "adherence"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    results: dict = {"command": " ".join(sys.argv), "environment": lab.Environment.capture().to_dict()}
    images, captions, _ = lab.shapes.sample(7, args.detector_images, split="all")
    results["detector, generator ground truth"] = lab.adherence(list(images), captions).per_attribute()
    soft, soft_captions = degraded_ground_truth(args.detector_images, 8)
    results["detector, ground truth blurred (σ 1.5 px) + noise (σ 12)"] = (
        lab.adherence(soft, soft_captions).per_attribute())
    record(results, "ground truth after the trained VAE", lab.adherence(vae_round_trip(images), captions), captions)

    prompts = lab.shapes.held_out_prompts(args.prompts)
    results["prompts"] = prompts
    for name, config in CONFIGS.items():
        if args.only not in name:
            continue
        try:
            imgs, seconds = generate(config, prompts, args.guidance)
        except Exception as err:  # record and go on: one broken configuration never loses the others
            results[name] = {"error": f"{type(err).__name__}: {err}"}
            print(f"{name}: {results[name]['error']}")
            continue
        report = lab.adherence(imgs, prompts)
        results[name] = {"seconds": round(seconds, 2)}
        record(results, name, report, prompts)
        results[f"{name} read back"] = [read_back(img) for img in imgs]
        titles = [f"{p}\n{o:.2f}" for p, o in zip(prompts, report.to_frame()["overall"])]
        lab.plots.plot_images(imgs[:12], titles[:12], ncols=6, path=out / f"images-{list(CONFIGS).index(name)}.png")
        print(f"{name}: overall {results[name]['overall']:.3f} ({seconds:.1f} s); by colour "
              f"{results[f'{name} by colour']}", flush=True)

    (out / "adherence.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    import pandas as pd

    table = pd.DataFrame({k: v for k, v in results.items() if isinstance(v, dict) and "overall" in v}).T
    print("\n" + table.round(3).to_markdown())
    (out / "adherence.md").write_text(table.round(3).to_markdown() + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
