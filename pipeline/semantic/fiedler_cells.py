"""Background decided per cell by the Fiedler vector, on top of the segments' background.

    fiedler_background(eigenvectors, threshold)   (k, h, w) -> (h, w) bool: background cells
    with_fiedler_background(grid, background)     (h, w) class ids -> the same, those cells 0

The segments' background is decided per segment (pipeline.semantic.segments: the border
segment and every segment whose mean Fiedler value is <= 0), so a segment that straddles an
object's edge gives all its cells to the object: on VOC07 the labels called 21% of the
background pixels objects. Single-object masks threshold the oriented Fiedler vector per cell
at its mean (pipeline.objects.masks, the best measured mask: docs/objects-results.md); the same test
per cell, at the image's mean plus `threshold` standard deviations, sends the cells at or below
it to the background whatever their segment (docs/semantic-results.md).
"""
from __future__ import annotations

import numpy as np

from pipeline.objects.localize import foreground_mask


def fiedler_background(eigenvectors: np.ndarray, threshold: float) -> np.ndarray:
    """(k, h, w) oriented eigenvectors -> (h, w) bool: the cells whose Fiedler value (eigenvector
    1) is at most its mean + threshold x its standard deviation over the image. No cell is when
    that would leave no foreground or no background (a flat vector), or when there is no
    Fiedler vector (k < 2)."""
    if len(eigenvectors) < 2:
        return np.zeros(eigenvectors.shape[1:], bool)
    fiedler = np.asarray(eigenvectors[1], np.float64)
    foreground, fell_back = foreground_mask(fiedler, float(fiedler.mean() + threshold * fiedler.std()))
    return np.zeros(fiedler.shape, bool) if fell_back else ~foreground


def with_fiedler_background(grid: np.ndarray, background: np.ndarray) -> np.ndarray:
    """(h, w) class ids (0 = background) and (h, w) bool background cells -> a copy of the grid
    with those cells 0."""
    out = np.array(grid, copy=True)
    out[background] = 0
    return out
