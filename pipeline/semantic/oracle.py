"""Ground-truth regions as an image's segments: the ceiling a backbone's features allow.

    gt_regions(gt, ignore_index)            (H, W) classes -> (classes (n,), masks (n, H, W) bool)
    cell_weights(masks, geom)               (n, H, W) pixel masks -> (n, grid_h, grid_w) coverage
    region_pooled(features, weights)        (h, w, C) patch features -> (n, C) coverage-weighted mean
    region_boxes(masks)                     -> (n, 4) pixel boxes, for crop re-embedding
    region_labels(masks, labels, shape)     (n,) labels of the regions -> (H, W) uint8 label image

One region per foreground class present in an image (all its pixels, connected or not), as a
perfect per-image segmentation would give; background (class 0) and void pixels are label 0.
Clustering these regions' features with the pipeline's own k-means and scoring the labels with
the same Hungarian matching measures what the features allow when segments are perfect.
"""
from __future__ import annotations

import numpy as np

from pipeline.features.geometry import GridGeometry, pixel_cells
from pipeline.objects.instances import pixel_box


def gt_regions(gt: np.ndarray, ignore_index: int | None = 255) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) int classes (0 = background) -> (classes (n,) int, masks (n, H, W) bool) of the
    foreground classes present, in increasing class order."""
    classes = np.unique(gt)
    classes = classes[(classes != 0) & (classes != (ignore_index if ignore_index is not None else -1))]
    return classes.astype(np.int64), gt[None, :, :] == classes[:, None, None]


def cell_weights(masks: np.ndarray, geom: GridGeometry) -> np.ndarray:
    """(n, H, W) bool masks over the original image -> (n, grid_h, grid_w) float64: the share of
    each cell's pixels inside each mask (a mask smaller than a cell keeps its partial weight
    instead of vanishing under nearest-cell sampling). Pixels map to cells as
    pipeline.features.geometry.grid_to_pixels maps cells to pixels."""
    rows, cols = pixel_cells(geom)  # (H, gh), (W, gw)
    if masks.shape[1:] != (geom.height, geom.width):
        raise ValueError(f"masks {masks.shape[1:]} are not at the image's size {(geom.height, geom.width)}")
    inside = np.einsum("hi,nhw,wj->nij", rows, masks.astype(np.float64), cols)
    pixels = rows.sum(axis=0)[:, None] * cols.sum(axis=0)[None, :]
    return inside / np.maximum(pixels, 1)


def region_pooled(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(h, w, C) patch features, (n, h, w) cell weights -> (n, C) float32 weighted means."""
    flat = features.reshape(-1, features.shape[-1]).astype(np.float64)
    w = weights.reshape(len(weights), -1)
    return ((w @ flat) / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)).astype(np.float32)


def region_boxes(masks: np.ndarray) -> np.ndarray:
    """(n, H, W) non-empty masks -> (n, 4) float [x0, y0, x1, y1] pixel boxes."""
    return np.array([pixel_box(m) for m in masks], np.float32).reshape(len(masks), 4)


def region_labels(masks: np.ndarray, labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(n, H, W) disjoint masks and their (n,) labels 1..255 -> (H, W) uint8, 0 outside them."""
    out = np.zeros(shape, np.uint8)
    for mask, label in zip(masks, labels):
        out[mask] = label
    return out
