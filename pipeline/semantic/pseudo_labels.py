"""Pseudo-label maps from clustered segments, and VOC-style palette PNGs.

    label_grid(segment_map, segment_labels)        (h, w) segments -> (h, w) uint8 class ids
    label_image(grid, geom, image, refine)         -> (H, W) uint8 over the original image
    label_image_from_scores(scores, geom, ...)     (L, h, w) class scores -> the same
    encode_label_png(labels) / decode_label_png    palette PNG bytes <-> (H, W) uint8

Class 0 is background (each image's background segment); cluster c is class c + 1.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipeline.features.geometry import GridGeometry, grid_to_pixels
from pipeline.objects.masks import PIXEL_REFINERS, SegmentConfig

REFINE_MODES = ("none",) + tuple(PIXEL_REFINERS)


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (768 ints): class 0 black, 255 (ignore) cream."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def label_grid(segment_map: np.ndarray, segment_labels: np.ndarray) -> np.ndarray:
    """(h, w) segment ids 0..n and (n,) class ids of segments 1..n -> (h, w) uint8, 0 stays 0."""
    lookup = np.concatenate([[0], np.asarray(segment_labels, dtype=np.int64)])
    return lookup[segment_map].astype(np.uint8)


def label_image(grid: np.ndarray, geom: GridGeometry, image: np.ndarray | None = None,
                refine: str = "none") -> np.ndarray:
    """(grid_h, grid_w) class ids -> (height, width) uint8 over the original image.

    "none": each pixel takes its cell's class. "guided" / "bilateral": each present class's
    indicator is upsampled bilinearly and snapped to image edges (pipeline.objects.masks, as
    single-object masks are), and every pixel takes the class with the highest response.
    """
    if refine not in REFINE_MODES:
        raise ValueError(f"refine must be one of {REFINE_MODES}, got {refine!r}")
    if refine == "none":
        return np.rint(grid_to_pixels(grid, geom, bilinear=False)).astype(np.uint8)
    indicators = np.arange(int(grid.max()) + 1)[:, None, None] == grid
    return label_image_from_scores(indicators.astype(np.float32), geom, image, refine)


def label_image_from_scores(scores: np.ndarray, geom: GridGeometry, image: np.ndarray | None = None,
                            refine: str = "none") -> np.ndarray:
    """(L, grid_h, grid_w) per-class scores (a self-trained head's probabilities) -> (height,
    width) uint8: the argmax of their bilinear upsampling, or with refine, of the classes that
    win some cell, each snapped to image edges as label_image does."""
    if refine not in REFINE_MODES:
        raise ValueError(f"refine must be one of {REFINE_MODES}, got {refine!r}")
    if refine == "none":
        return np.argmax(np.stack([grid_to_pixels(s, geom) for s in scores]), axis=0).astype(np.uint8)
    classes = np.unique(np.argmax(scores, axis=0))
    if len(classes) == 1:  # nothing to snap: one class everywhere, with or without the image
        return np.full((geom.height, geom.width), classes[0], np.uint8)
    if image is None:
        raise ValueError(f"{refine} refinement needs the image")
    upsampled = np.stack([grid_to_pixels(scores[c], geom) for c in classes])
    refined = PIXEL_REFINERS[refine](image, upsampled, SegmentConfig())
    return classes[np.argmax(refined, axis=0)].astype(np.uint8)


def encode_label_png(labels: np.ndarray) -> bytes:
    """(H, W) uint8 class ids -> palette ("P") PNG bytes, VOC colours."""
    img = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="P")
    img.putpalette(voc_palette())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def decode_label_png(data: bytes) -> np.ndarray:
    """Palette or greyscale PNG bytes -> (H, W) uint8 class ids (palette indices, not colours)."""
    img = Image.open(io.BytesIO(data))
    if img.mode not in ("P", "L"):
        raise ValueError(f"label PNGs must be palette or greyscale, got mode {img.mode}")
    return np.asarray(img)
