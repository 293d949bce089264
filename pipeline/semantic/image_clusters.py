"""Per-image consolidation of segment clusters: an image holds few classes.

    consolidate(distances, areas, min_share)   (n, C), (n,) -> (n,) cluster ids 0..C-1
    image_regions(features, areas, clusters)   (n, D), (n,), (n,) -> (r, D) one feature per region

With 15 segments per image, one object is cut into parts and the dataset-wide k-means sends
the parts to different clusters; Hungarian matching then credits only one of them to the
object's class. VOC images hold 1-2 classes, so a cluster that takes a small share of an
image's foreground is more likely a stray part than a second object: its segments move to the
nearest cluster among those that cover a large share. The segments that end in one cluster
form one region of the image, closer to a whole object than any of its parts: refitting the
clusters over every image's regions (pipeline.semantic.labelling.fit_label_clusters) clusters
objects rather than parts, as the oracle's ground-truth regions are clustered.
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


def image_regions(features: np.ndarray, areas: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """One image's (n, D) segment features, (n,) areas and (n,) cluster ids -> (r, D) float32,
    one row per distinct cluster id (ascending): the area-weighted mean of its segments'
    features (the mean feature of the region they cover, for features pooled per segment)."""
    ids, region = np.unique(clusters, return_inverse=True)
    weights = np.asarray(areas, dtype=np.float64)
    sums = np.zeros((len(ids), features.shape[1]), np.float64)
    np.add.at(sums, region, weights[:, None] * features)
    totals = np.bincount(region, weights=weights, minlength=len(ids))
    return (sums / np.maximum(totals, 1e-12)[:, None]).astype(np.float32)
