"""Whole regions re-embedded (`--region-crops NAME`): each image's labelled regions cropped,
embedded again and clustered over the dataset a second time.

    RegionCropConfig(backbone, features, crop_size)
    image_regions_of(segment_map, classes, geom)   -> (labels (r,), cells (r,), boxes (r, 4))
    region_features(crops, pooled, features)       (r, E), (r, D) -> (r, F) what the second k-means reads
    relabel(classes, labels, new)                  (n,) segment classes -> the same segments' new classes

Segments are object parts (15 per image); per-image consolidation and region refits
(pipeline.semantic.image_clusters) give each image a few regions, the segments that share a
label, closer to whole objects. A crop of a part says less about the object's class than a
crop of the whole, so the regions' boxes are cropped from the image and embedded by NAME
(a registry entry: the graph's backbone's CLS, or a supervised classifier,
pipeline.features.supervised), optionally joined with the region's pooled segment features,
and a second dataset-wide k-means over every image's regions gives each region its class
(docs/semantic.md, "Whole regions re-embedded").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.config import check
from pipeline.features.geometry import GridGeometry, cells_to_box
from pipeline.semantic.segments import joined

# What a region's feature is made of: its crop's embedding alone, or joined with the
# area-weighted mean of its segments' own features (each at unit norm, pipeline.semantic.segments.joined).
REGION_FEATURES = ("crop", "crop+pooled")


@dataclass(frozen=True)
class RegionCropConfig:
    backbone: str  # the crops' embedder: a segment-embedder name (pipeline.features.supervised.segment_embedder)
    # "crop+pooled" was chosen on VOC07 tune over "crop" (labels 28.8 against 27.3 with the
    # supervised Lite0; check agrees, 32.0 against 31.6; docs/semantic.md).
    features: str = "crop+pooled"
    crop_size: int = 224  # crops are resized to this square, as segment crops are

    def __post_init__(self):
        where = "pseudo_labels.region_crops"
        check(self.features in REGION_FEATURES, f"{where}.features", f"one of {list(REGION_FEATURES)}", self.features)
        check(bool(self.backbone), f"{where}.backbone", "an embedder name", self.backbone)
        check(self.crop_size >= 1, f"{where}.crop_size", "a side in pixels >= 1", self.crop_size)


def image_regions_of(segment_map: np.ndarray, classes: np.ndarray,
                     geom: GridGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's (h, w) segment map (0 = background, 1..n) and its segments' (n,) classes
    (0 = background) -> (labels (r,) int64 ascending, cells (r,) int64, boxes (r, 4) float32
    pixel [x0, y0, x1, y1]): one region per foreground class present, its box the bounding box
    of every cell its segments cover (connected or not), as the oracle boxes a ground-truth class."""
    grid = np.concatenate([[0], np.asarray(classes, np.int64)])[segment_map]
    labels = np.unique(grid[grid > 0])
    cells = np.zeros(len(labels), np.int64)
    boxes = np.zeros((len(labels), 4), np.float32)
    for r, label in enumerate(labels):
        mask = grid == label
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        cells[r] = mask.sum()
        boxes[r] = cells_to_box(geom, rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
    return labels, cells, boxes


def region_features(crops: np.ndarray, pooled: np.ndarray, features: str) -> np.ndarray:
    """(r, E) crop embeddings and (r, D) pooled segment features of the same regions -> (r, F)
    float32: the crops alone ("crop"), or both at unit norm, concatenated ("crop+pooled")."""
    if features == "crop":
        return np.asarray(crops, np.float32)
    if features == "crop+pooled":
        return joined([np.asarray(crops, np.float32), np.asarray(pooled, np.float32)])
    raise ValueError(f"region features must be one of {REGION_FEATURES}, got {features!r}")


def relabel(classes: np.ndarray, labels: np.ndarray, new: np.ndarray) -> np.ndarray:
    """(n,) segment classes (0 = background), an image's region labels (r,) and their new
    classes (r,) -> (n,) int64: each segment takes its region's new class, background stays 0.
    ValueError when a foreground class has no region (the regions belong to other labels)."""
    classes = np.asarray(classes, np.int64)
    lookup = dict(zip(np.asarray(labels).tolist(), np.asarray(new).tolist()))
    missing = sorted(set(classes[classes > 0].tolist()) - set(lookup))
    if missing:
        raise ValueError(f"segment classes {missing} have no re-embedded region")
    lookup[0] = 0
    return np.array([lookup[c] for c in classes.tolist()], np.int64)
