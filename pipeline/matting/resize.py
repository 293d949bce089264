"""Working sizes: images shrunk for the solve (area-averaged), trimaps shrunk without losing
their unknown band, and alpha brought back to full size with the known pixels kept exact.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.matting.trimap import split


def fit_long_side(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(h, w) scaled down so that max(h, w) <= max_side (never up)."""
    if not max_side or max(height, width) <= max_side:
        return height, width
    s = max_side / max(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) -> (h, w, 3), area-averaged when shrinking (no aliasing of fine hair)."""
    if image.shape[:2] == size:
        return image
    return np.asarray(Image.fromarray(image).resize(size[::-1], Image.Resampling.BOX))


def resize_float(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float -> (h, w) float64, bilinear."""
    if values.shape == size:
        return values.astype(np.float64)
    img = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(img.resize(size[::-1], Image.Resampling.BILINEAR), dtype=np.float64)


def resize_trimap(trimap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) trimap -> (h, w): a pixel stays known only where all it averages is known, so
    the unknown band never shrinks (nearest would drop thin bands)."""
    if trimap.shape == size:
        return trimap
    small = resize_float(trimap, size)
    out = np.full(size, 0.5)
    out[small >= 1 - 1e-6] = 1.0
    out[small <= 1e-6] = 0.0
    return out


def alpha_at_full_size(alpha: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    """(h, w) alpha of a working size, (H, W) full-size trimap -> (H, W) alpha: bilinearly
    upsampled, with the trimap's known pixels kept exact."""
    alpha = np.clip(resize_float(alpha, trimap.shape), 0, 1)
    fg, bg, _ = split(trimap)
    alpha[fg], alpha[bg] = 1.0, 0.0
    return alpha
