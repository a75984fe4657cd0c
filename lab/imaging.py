"""Image helpers shared by the quality metrics and the shape-scene detector."""

from __future__ import annotations

import numpy as np


def to_array(image) -> np.ndarray:
    """A uint8 HxWx3 array from a PIL image, a path or an array."""
    if isinstance(image, np.ndarray):
        arr = image
    else:
        from PIL import Image

        img = Image.open(image) if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__") else image
        arr = np.asarray(img.convert("RGB"))
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {arr.dtype}")
    return arr


def luminance(arr: np.ndarray) -> np.ndarray:
    return arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as PIL's "L"
