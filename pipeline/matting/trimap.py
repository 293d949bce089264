"""Trimaps: given ones read from files, automatic ones from the Fiedler vector's mask.

A trimap here is (H, W) float64 with 0 = background, 1 = foreground, 0.5 = unknown, the
convention of pymatting (which reads 0 / 128 / 255 files as 0 / ~0.5 / 1).

The automatic trimap: threshold the oriented Fiedler vector (positive = foreground guess,
pipeline.spectral.spectrum) at its mean, keep the largest component (the best measured
single-object patch mask: docs/objects-results.md), bring it to pixels, optionally snap it to image
edges with the guided filter, then erode it by `fg_width` for sure foreground and take what lies further than `bg_width`
outside it as sure background. Widths are Euclidean distances (exact discs, not
iterated 3 x 3 erosions, whose diamonds or squares make widths depend on direction), in
patch cells by default because the mask's edge is only known to about one cell.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from kernels.guided_filter import guided_filter
from pipeline.config import check
from pipeline.features.geometry import GridGeometry, grid_to_pixels
from pipeline.objects.localize import foreground_mask, largest_component

UNITS = ("cells", "pixels")
REFINE = ("none", "guided")


@dataclass(frozen=True)
class TrimapConfig:
    # Fiedler threshold: a number or "mean" (the mean gave the better masks on ECSSD: docs/objects-results.md).
    threshold: float | str = "mean"
    largest_component: bool = True
    # Sure foreground: mask pixels further than fg_width from its edge; sure background:
    # pixels further than bg_width outside it; in `unit`s ("cells": one patch cell measured
    # in pixels of the image being matted).
    fg_width: float = 1.0
    bg_width: float = 1.0
    unit: str = "cells"
    # "guided": snap the blocky cell mask to image edges first (guided filter, radius in
    # pixels at 1024 px long side, eps), which lets narrower bands hold the true edge.
    refine: str = "none"
    guided_radius: int = 16
    guided_eps: float = 1e-2

    def __post_init__(self):
        check(self.threshold == "mean" or isinstance(self.threshold, (int, float)), "matte.trimap.threshold",
              "a number or 'mean'", self.threshold)
        check(self.unit in UNITS, "matte.trimap.unit", f"one of {list(UNITS)}", self.unit)
        check(self.refine in REFINE, "matte.trimap.refine", f"one of {list(REFINE)}", self.refine)


def read_trimap(data) -> np.ndarray:
    """A trimap image (path, bytes or array; any mode, 0..255 or 0..1) -> (H, W) float64 in
    {0, 0.5, 1}: <= 10% background, >= 90% foreground (pymatting's thresholds), else unknown."""
    if isinstance(data, (str, bytes)) or hasattr(data, "read"):
        img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        arr = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    else:
        arr = np.asarray(data, dtype=np.float64)
        if arr.ndim == 3:
            arr = arr[..., 0]
        if arr.max() > 1.0:
            arr = arr / 255.0
    out = np.full(arr.shape, 0.5)
    out[arr <= 0.1] = 0.0
    out[arr >= 0.9] = 1.0
    return out


def split(trimap: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W) trimap -> (foreground, background, unknown), each (H, W) bool."""
    fg, bg = trimap >= 0.9, trimap <= 0.1
    return fg, bg, ~(fg | bg)


def trimap_from_mask(mask: np.ndarray, fg_width: float, bg_width: float) -> np.ndarray:
    """(H, W) bool mask, widths in pixels -> (H, W) trimap.

    Foreground: mask pixels whose distance to the nearest non-mask pixel exceeds fg_width;
    background: non-mask pixels further than bg_width from the mask; the rest unknown. A part
    too thin for its width keeps its innermost pixels (distance above half its maximum) as
    sure, so that a trimap from any non-empty, non-full mask has both labels.
    """
    mask = np.asarray(mask, dtype=bool)
    trimap = np.full(mask.shape, 0.5)
    if mask.all() or not mask.any():
        raise ValueError("the mask is empty or full: no trimap has both foreground and background")
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    trimap[inside > min(fg_width, 0.5 * inside.max())] = 1.0
    trimap[outside > min(bg_width, 0.5 * outside.max())] = 0.0
    return trimap


def cell_pixels(geom: GridGeometry) -> float:
    """Side of one patch cell in pixels of the image (mean of the two axes)."""
    return 0.5 * (geom.cell_h / geom.scale_y + geom.cell_w / geom.scale_x)


def fiedler_mask(eigenvectors: np.ndarray, geom: GridGeometry, cfg: TrimapConfig = TrimapConfig(),
                 image: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """(k, gh, gw) oriented eigenvectors -> ((H, W) bool foreground mask, fell back).

    fell back: the thresholded vector was empty or full, and the mask is the whole image.
    `image` (H, W, 3) uint8 is needed only for refine="guided".
    """
    if cfg.refine not in REFINE:
        raise ValueError(f"refine must be one of {REFINE}, got {cfg.refine!r}")
    fiedler = eigenvectors[1] if len(eigenvectors) > 1 else np.zeros(eigenvectors.shape[1:])
    cells, fallback = foreground_mask(fiedler, cfg.threshold)
    if cfg.largest_component:
        cells = largest_component(cells, fiedler)
    coarse = grid_to_pixels(cells, geom, bilinear=False)
    if cfg.refine == "guided" and not fallback:
        if image is None:
            raise ValueError("refine='guided' needs the image")
        radius = max(1, round(cfg.guided_radius * max(geom.height, geom.width) / 1024))
        coarse = guided_filter(image.astype(np.float32) / 255.0, coarse, radius, cfg.guided_eps)
    return coarse > 0.5, fallback


def auto_trimap(eigenvectors: np.ndarray, geom: GridGeometry, cfg: TrimapConfig = TrimapConfig(),
                image: np.ndarray | None = None) -> np.ndarray:
    """(k, gh, gw) oriented eigenvectors -> (H, W) trimap around the Fiedler mask.

    A degenerate mask (empty or full: no object found) raises ValueError, since a trimap then
    has nothing to anchor one of its sides.
    """
    if cfg.unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {cfg.unit!r}")
    mask, fallback = fiedler_mask(eigenvectors, geom, cfg, image)
    if fallback:
        raise ValueError("the Fiedler vector gives no object (empty or full mask)")
    scale = cell_pixels(geom) if cfg.unit == "cells" else 1.0
    return trimap_from_mask(mask, cfg.fg_width * scale, cfg.bg_width * scale)
