"""Procedural captioned shape scenes, and a detector that reads a scene back from pixels.

The embedded ``tiny`` model is trained on these scenes, and prompt adherence is scored with the
detector, so both need no downloaded weights.

Caption grammar (every caption the generator writes, and every caption ``parse_caption`` accepts)::

    caption    := objects ", " BACKGROUND " background"
    objects    := object " " PLACE                                   one shape
                | object " on the left and " object " on the right"  two shapes, side by side
                | object " at the top and " object " at the bottom"  two shapes, stacked
    object     := "a " COLOUR " " SHAPE
    PLACE      := "on the left" | "on the right" | "at the top" | "at the bottom" | "in the center"
    COLOUR     := red | green | blue | yellow
    SHAPE      := circle | square | triangle
    BACKGROUND := white | black | gray

Example: "a red circle on the left and a blue square on the right, white background".
Two shapes in one scene always have different colours, so a colour names one object.
"""

from __future__ import annotations

import itertools
import re
import zlib
from dataclasses import dataclass, field

import numpy as np

from ._checks import LabError, choose, positive_int
from .imaging import to_array
from .results import Record

SIZE = 64
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
PLACES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
          "center": "in the center"}
ANCHORS = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75), "center": (0.5, 0.5)}
PAIRS = (("left", "right"), ("top", "bottom"))
ATTRIBUTES = ("background", "count", "colour", "shape", "position")


@dataclass
class Shape(Record):
    colour: str
    shape: str
    position: str


@dataclass
class Scene(Record):
    """What a caption says: a background and one or two shapes at named places."""

    background: str
    objects: list[Shape] = field(default_factory=list)

    def caption(self) -> str:
        parts = [f"a {o.colour} {o.shape} {PLACES[o.position]}" for o in self.objects]
        return " and ".join(parts) + f", {self.background} background"


def random_scene(rng: np.random.Generator) -> Scene:
    """A scene drawn uniformly from the grammar."""
    background = str(rng.choice(list(BACKGROUNDS)))
    if rng.random() < 0.5:
        places: tuple[str, ...] = (str(rng.choice(list(PLACES))),)
    else:
        places = PAIRS[int(rng.integers(len(PAIRS)))]
    colours = rng.choice(list(COLOURS), size=len(places), replace=False)
    objects = [Shape(str(c), str(rng.choice(SHAPES)), p) for c, p in zip(colours, places)]
    return Scene(background, objects)


def _mask(shape: str, cx: float, cy: float, r: float, n: int, supersample: int) -> np.ndarray:
    """Coverage in [0, 1] of one shape on an n×n grid (anti-aliased by supersampling)."""
    m = n * supersample
    coords = (np.arange(m) + 0.5) / supersample
    x, y = np.meshgrid(coords, coords)
    dx, dy = x - cx, y - cy
    if shape == "circle":
        inside = dx**2 + dy**2 <= r**2
    elif shape == "square":
        half = r * 0.85  # about the circle's area, so size does not give the shape away
        inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    else:  # an upright isosceles triangle: apex at the top, base at the bottom
        top, bottom = cy - r, cy + 0.8 * r
        inside = (y >= top) & (y <= bottom) & (np.abs(dx) <= 1.1 * r * (y - top) / (bottom - top))
    return inside.reshape(n, supersample, n, supersample).mean(axis=(1, 3))


def render(scene: Scene, rng: np.random.Generator | None = None, size: int = SIZE) -> np.ndarray:
    """Draw ``scene`` as a uint8 size×size×3 array; ``rng`` jitters position and size (None: exact)."""
    img = np.empty((size, size, 3), dtype=np.float64)
    img[:] = BACKGROUNDS[scene.background]
    for obj in scene.objects:
        ax, ay = ANCHORS[obj.position]
        jitter = rng.uniform(-0.05, 0.05, size=2) if rng is not None else np.zeros(2)
        r = size * (rng.uniform(0.15, 0.19) if rng is not None else 0.17)
        cover = _mask(obj.shape, (ax + jitter[0]) * size, (ay + jitter[1]) * size, r, size, 4)[..., None]
        img = img * (1 - cover) + np.asarray(COLOURS[obj.colour], dtype=np.float64) * cover
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def all_scenes() -> list[Scene]:
    """Every scene the grammar can describe (828), in a fixed order."""
    out = []
    for bg in BACKGROUNDS:
        for place in PLACES:
            out += [Scene(bg, [Shape(c, s, place)]) for c in COLOURS for s in SHAPES]
        for pair in PAIRS:
            for c1, c2 in itertools.permutations(COLOURS, 2):
                out += [Scene(bg, [Shape(c1, s1, pair[0]), Shape(c2, s2, pair[1])]) for s1 in SHAPES for s2 in SHAPES]
    return out


def is_held_out(caption: str) -> bool:
    """One caption in ten, fixed by a hash, never appears in training: adherence is measured on them."""
    return zlib.crc32(caption.encode()) % 10 == 0


def sample(seed: int, n: int, size: int = SIZE, split: str = "train") -> tuple[np.ndarray, list[str], list[Scene]]:
    """``n`` scenes from ``seed``: images (n×size×size×3 uint8), captions and scenes. Same seed, same data.

    Args:
        split: "train" (held-out captions excluded), "held-out" (only those) or "all".
    """
    choose("split", split, ("train", "held-out", "all"))
    rng = np.random.default_rng(seed)
    scenes: list[Scene] = []
    while len(scenes) < n:
        scene = random_scene(rng)
        if split == "all" or is_held_out(scene.caption()) == (split == "held-out"):
            scenes.append(scene)
    images = np.stack([render(s, rng, size) for s in scenes])
    return images, [s.caption() for s in scenes], scenes


_OBJECT = r"a (\w+) (\w+)"
_CAPTION = re.compile(
    rf"^{_OBJECT} (on the left|on the right|at the top|at the bottom|in the center)"
    rf"(?: and {_OBJECT} (on the left|on the right|at the top|at the bottom|in the center))?, (\w+) background$"
)
_PLACE_OF = {v: k for k, v in PLACES.items()}


def parse_caption(caption: str) -> Scene:
    """The scene a caption of the grammar describes; anything else raises ``LabError``."""
    m = _CAPTION.match(caption.strip().lower())
    if not m:
        raise LabError(
            f"prompt {caption!r} is not a shape-scene caption; expected e.g. "
            "'a red circle on the left and a blue square on the right, white background' (grammar in lab.shapes)"
        )
    c1, s1, p1, c2, s2, p2, bg = m.groups()
    objects = [Shape(c1, s1, _PLACE_OF[p1])] + ([Shape(c2, s2, _PLACE_OF[p2])] if c2 else [])
    scene = Scene(bg, objects)
    _validate(scene, caption)
    return scene


def is_shape_caption(prompt: str) -> bool:
    """Whether ``prompt`` is a caption of the grammar (so adherence can be scored)."""
    try:
        parse_caption(prompt)
    except LabError:
        return False
    return True


def _validate(scene: Scene, caption: str) -> None:
    for kind, value, allowed in [("background", scene.background, BACKGROUNDS)] + [
        (k, getattr(o, k), a) for o in scene.objects for k, a in (("colour", COLOURS), ("shape", SHAPES))
    ]:
        if value not in allowed:
            raise LabError(f"prompt {caption!r}: unknown {kind} {value!r}; allowed: {', '.join(allowed)}")
    if len(scene.objects) == 2:
        places = (scene.objects[0].position, scene.objects[1].position)
        if places not in PAIRS:
            raise LabError(f"prompt {caption!r}: two shapes must be left/right or top/bottom, got {places}")
        if scene.objects[0].colour == scene.objects[1].colour:
            raise LabError(f"prompt {caption!r}: two shapes need different colours")


# --- detection -----------------------------------------------------------------------------------

MIN_AREA = 0.01  # a colour covering less than 1% of the image is noise, not an object


@dataclass
class Detection(Record):
    """What the detector reads from an image."""

    background: str
    objects: list[Shape]
    areas: list[float]  # fraction of the image each object covers


def _nearest(pixels: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    colours = np.asarray(list(palette.values()), dtype=np.float64)
    d = np.linalg.norm(pixels[..., None, :].astype(np.float64) - colours, axis=-1)
    return d.argmin(axis=-1), d.min(axis=-1)


def classify_shape(mask: np.ndarray) -> str:
    """circle / square / triangle: the ideal shape, fitted to the mask's bounding box, that overlaps it best
    (intersection over union); robust to the soft edges and rounded corners of generated images."""
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = mask[top:bottom, left:right]
    h, w = box.shape
    y, x = np.mgrid[0:h, 0:w]
    u, v = (x + 0.5) / w, (y + 0.5) / h  # coordinates in the box, 0..1
    templates = {
        "circle": (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25,
        "square": np.ones_like(box, dtype=bool),
        "triangle": np.abs(u - 0.5) <= 0.5 * v,  # apex at the top, as the generator draws it
    }

    def iou(t: np.ndarray) -> float:
        return float((box & t).sum() / max(1, (box | t).sum()))

    return max(templates, key=lambda k: iou(templates[k]))


def _position(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() / mask.shape[1], ys.mean() / mask.shape[0]
    return min(ANCHORS, key=lambda k: (ANCHORS[k][0] - cx) ** 2 + (ANCHORS[k][1] - cy) ** 2)


def detect(image) -> Detection:
    """Read background, and each shape's colour, shape and position, from an RGB image."""
    arr = to_array(image)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    bg_idx, _ = _nearest(np.median(border, axis=0)[None], BACKGROUNDS)
    background = list(BACKGROUNDS)[int(bg_idx[0])]
    palette = {"background": BACKGROUNDS[background], **COLOURS}
    label, dist = _nearest(arr, palette)
    label[dist > 90] = 0  # far from every palette colour: not an object pixel
    objects, areas = [], []
    for i, colour in enumerate(COLOURS, start=1):
        mask = label == i
        area = float(mask.mean())
        if area >= MIN_AREA:
            objects.append(Shape(colour, classify_shape(mask), _position(mask)))
            areas.append(area)
    order = np.argsort(areas)[::-1][:2]  # a scene holds at most two shapes
    return Detection(background, [objects[i] for i in order], [areas[i] for i in order])


@dataclass
class Adherence(Record):
    """Whether one image matches its prompt, attribute by attribute (1 = right, 0 = wrong)."""

    prompt: str
    scores: dict[str, float]
    detected: Detection

    @property
    def overall(self) -> float:
        return float(np.mean(list(self.scores.values())))

    @property
    def exact(self) -> bool:
        return all(v == 1.0 for v in self.scores.values())


def adherence(image, prompt: str) -> Adherence:
    """Score ``image`` against shape-scene ``prompt``: background, count, and per shape its colour,
    shape and position (shape and position count as wrong when the colour is missing)."""
    want = parse_caption(prompt)
    got = detect(image)
    by_colour = {o.colour: o for o in got.objects}
    found = [by_colour.get(o.colour) for o in want.objects]
    n = len(want.objects)
    scores = {
        "background": float(got.background == want.background),
        "count": float(len(got.objects) == n),
        "colour": sum(f is not None for f in found) / n,
        "shape": sum(f is not None and f.shape == o.shape for f, o in zip(found, want.objects)) / n,
        "position": sum(f is not None and f.position == o.position for f, o in zip(found, want.objects)) / n,
    }
    return Adherence(prompt, scores, got)


def detector_accuracy(n: int = 500, seed: int = 12345) -> dict[str, float]:
    """Mean adherence of generator ground truth to its own captions: the detector's accuracy."""
    images, captions, _ = sample(seed, n, split="all")
    rows = [adherence(img, cap).scores for img, cap in zip(images, captions)]
    return {a: float(np.mean([r[a] for r in rows])) for a in ATTRIBUTES}


def held_out_prompts(n: int = 50, seed: int = 0) -> list[str]:
    """``n`` distinct captions that training never sees, drawn with ``seed``."""
    pool = [c for c in (s.caption() for s in all_scenes()) if is_held_out(c)]
    positive_int("n", n)
    if n > len(pool):
        raise LabError(f"n={n} exceeds the {len(pool)} held-out captions")
    rng = np.random.default_rng(seed)
    return [pool[i] for i in sorted(rng.choice(len(pool), size=n, replace=False))]
