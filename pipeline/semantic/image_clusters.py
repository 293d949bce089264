"""Per-image consolidation of segment clusters: an image holds few classes.

    consolidate(distances, areas, min_share)   (n, C), (n,) -> (n,) cluster ids 0..C-1

With 15 segments per image, one object is cut into parts and the dataset-wide k-means sends
the parts to different clusters; Hungarian matching then credits only one of them to the
object's class. VOC images hold 1-2 classes, so a cluster that takes a small share of an
image's foreground is more likely a stray part than a second object: its segments move to the
nearest cluster among those that cover a large share. The clusters themselves do not change.
"""
from __future__ import annotations

import numpy as np


def consolidate(distances: np.ndarray, areas: np.ndarray, min_share: float) -> np.ndarray:
    """One image's foreground segments -> their cluster ids.

    distances: (n, C) squared distances of the segments' features to the C centroids;
    areas: (n,) segment areas (cells). Each segment first takes its nearest centroid; the
    clusters whose segments cover at least `min_share` of the summed area are kept (the
    largest alone when none does), and every segment takes its nearest kept centroid.
    min_share 0 keeps every cluster: plain nearest-centroid assignment.
    """
    distances = np.asarray(distances)
    nearest = np.argmin(distances, axis=1)
    if not len(nearest) or min_share <= 0:
        return nearest
    cover = np.bincount(nearest, weights=np.asarray(areas, dtype=np.float64), minlength=distances.shape[1])
    kept = np.flatnonzero(cover >= min_share * cover.sum())
    if not len(kept):
        kept = np.array([np.argmax(cover)])
    return kept[np.argmin(distances[:, kept], axis=1)]
