"""The network's input from a decoded image: resize the long side, crop to a patch multiple.

Plain NumPy and PIL (no torch), so a CPU decode stage can prepare inputs for the GPU actors.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def parse_resize(resize: str | int | None) -> int | None:
    """"crop"/None -> None (native size, cropped); 448, "448" or "long_side=448" -> 448."""
    if resize is None or resize == "crop":
        return None
    if isinstance(resize, str):
        resize = resize.removeprefix("long_side=")
    long_side = int(resize)
    if long_side <= 0:
        raise ValueError(f"long side must be positive, got {long_side}")
    return long_side


def preprocess(image: np.ndarray, patch: int, long_side: int | None) -> tuple[np.ndarray, float]:
    """uint8 (H, W, 3) -> (uint8 (h, w, 3) with h, w multiples of `patch`, scale = resized/original).

    Optionally resizes (bicubic) so the long side is `long_side`, then crops bottom/right down to
    a patch multiple, as the reference does, so pixel (y, x) of the input is (y, x) * scale here.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
    scale = 1.0
    if long_side is not None:
        h, w = image.shape[:2]
        scale = long_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL wants (w, h)
        image = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
    h, w = (image.shape[0] // patch) * patch, (image.shape[1] // patch) * patch
    if h == 0 or w == 0:
        raise ValueError(f"image {image.shape[:2]} is smaller than one {patch}px patch")
    return image[:h, :w], scale
