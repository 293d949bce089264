"""One image's segments for semantic segmentation (the paper's per-image step).

    segment_map(eigenvectors, cfg)          (k, h, w) -> (h, w) int16 labels, 0 = background
    segment_boxes(labels, n, geom, cfg)     -> (n, 4) float pixel boxes of segments 1..n
    segment_crops(image, boxes, size)       -> n crops, size x size x 3 uint8, to re-embed
    pooled_features(features, labels, n)    (h, w, C) -> (n, C) mean feature per segment
    joined(pooled)                          several kinds' (n, C_i) -> one (n, sum C_i) feature

Segments are k-means clusters of the patches' spectral embedding (eigenvectors 1..m; the
constant eigenvector 0 carries nothing). Background, label 0, is the segment covering most of
the grid border, and with cfg.background == "fiedler" also every segment whose mean Fiedler
value is <= 0; the others are numbered 1..n by decreasing area.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from pipeline.config import SegmentsConfig, intermediate_block
from pipeline.features.geometry import GridGeometry, cells_to_box
from pipeline.spectral.affinity import upsample_features
from pipeline.spectral.spectrum import border_mask

BACKGROUND_RULES = ("border", "fiedler")


def feature_kinds(features: str) -> tuple[str, ...]:
    """A segment-feature setting (pipeline.config.SegmentsConfig.features) -> its kinds in
    order: "crop" (each segment's box crop re-embedded, CLS), "pool" (the graph's own patch
    features averaged under the mask), "keys" and "blockB" (the backbone's last-block keys or
    block B's tokens averaged, B a block index). Kinds join with "+", e.g. "pool+block9" or
    "crop+pool+block9"."""
    parts = tuple(features.split("+"))
    bad = [p for p in parts if p not in ("crop", "pool", "keys") and intermediate_block(p) is None]
    if bad or len(set(parts)) != len(parts):
        raise ValueError(f"segment features must be crop, pool, keys and blockB (B a block index), "
                         f"alone or joined by '+', got {features!r}")
    return parts


def pooled_parts(features: str) -> tuple[str, ...]:
    """The kinds of a segment-feature setting averaged under each mask (all but "crop"; empty
    for "crop" alone)."""
    return tuple(p for p in feature_kinds(features) if p != "crop")


def backbone_kinds(features: str) -> tuple[str, ...]:
    """The kinds of a segment-feature setting that need the backbone's own output (Backbone's
    also=): keys and blocks, not the graph's features ("pool") nor crops."""
    return tuple(p for p in pooled_parts(features) if p != "pool")


def backbone_grids(output, kinds: tuple[str, ...], upsample: int) -> dict[str, np.ndarray]:
    """A BackboneOutput holding `kinds` in its `also` -> {kind: (grid_h, grid_w, C)} on the
    eigenvectors' grid (the graph's upsampling)."""
    return {kind: upsample_features(output.also[kind], upsample) for kind in kinds}


def segment_features_kind(value: str) -> str:
    """Checks a segment-feature setting (argparse type)."""
    feature_kinds(value)
    return value


def joined(pooled: list[np.ndarray]) -> np.ndarray:
    """Per-segment features of several kinds, each (n, C_i) -> (n, sum C_i): a single kind as it
    is; several each at unit norm, concatenated and scaled by 1/sqrt(count), so a cosine of two
    joined features is the mean of the kinds' cosines."""
    if len(pooled) == 1:
        return pooled[0]
    unit = [p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12) for p in pooled]
    return (np.concatenate(unit, axis=1) / np.sqrt(len(pooled))).astype(np.float32)


def segment_map(eigenvectors: np.ndarray, cfg: SegmentsConfig) -> np.ndarray:
    """(k, h, w) eigenvectors -> (h, w) int16 labels: 0 background, 1..n by decreasing area.

    Fewer than cfg.n_segments labels come back when the grid has fewer distinct points.
    """
    k, h, w = eigenvectors.shape
    m = max(1, min(cfg.n_eigenvectors, k - 1))
    points = eigenvectors[1:1 + m].reshape(m, -1).T.astype(np.float64)
    n_clusters = max(1, min(cfg.n_segments, len(np.unique(points.round(6), axis=0))))
    # Imported here: extraction without segments (bench/gpu_check.py's bare GPU machine) needs
    # no scikit-learn.
    from sklearn.cluster import KMeans

    raw = KMeans(n_clusters=n_clusters, n_init=3, random_state=cfg.seed).fit_predict(points)
    raw = raw.reshape(h, w)

    if cfg.background not in BACKGROUND_RULES:
        raise ValueError(f"background must be one of {BACKGROUND_RULES}, got {cfg.background!r}")
    ids, areas = np.unique(raw, return_counts=True)
    edge = raw[border_mask(h, w)]
    on_border = np.array([np.sum(edge == i) for i in ids])
    background = {ids[np.lexsort((-areas, -on_border))[0]]}  # most border cells, then largest
    if cfg.background == "fiedler" and k > 1:
        background |= {i for i in ids if eigenvectors[1][raw == i].mean() <= 0}
    others = [i for i in ids[np.argsort(-areas, kind="stable")] if i not in background]
    labels = np.zeros((h, w), np.int16)
    for new, old in enumerate(others, start=1):
        labels[raw == old] = new
    return labels


def segment_boxes(labels: np.ndarray, n: int, geom: GridGeometry, cfg: SegmentsConfig) -> np.ndarray:
    """(h, w) labels -> (n, 4) float [x0, y0, x1, y1] pixel boxes of segments 1..n.

    Each mask is eroded then dilated at patch level before its box is taken; a segment that
    erosion removes entirely keeps the box of its raw mask.
    """
    boxes = np.zeros((n, 4), np.float32)
    for s in range(1, n + 1):
        mask = labels == s
        opened = ndimage.binary_erosion(mask, iterations=cfg.erode) if cfg.erode else mask
        if opened.any():
            mask = ndimage.binary_dilation(opened, iterations=cfg.dilate) if cfg.dilate else opened
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        boxes[s - 1] = cells_to_box(geom, rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
    return boxes


def segment_crops(image: np.ndarray, boxes: np.ndarray, size: int) -> list[np.ndarray]:
    """(H, W, 3) uint8 image, (n, 4) pixel boxes -> n crops resized to (size, size, 3)."""
    crops = []
    height, width = image.shape[:2]
    for x0, y0, x1, y1 in boxes:
        x0, y0 = int(np.floor(x0)), int(np.floor(y0))
        x1, y1 = max(int(np.ceil(x1)), x0 + 1), max(int(np.ceil(y1)), y0 + 1)
        crop = image[max(y0, 0):min(y1, height), max(x0, 0):min(x1, width)]
        crops.append(np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC)))
    return crops


def pooled_features(features: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """(h, w, C) patch features on the labels' grid -> (n, C) float32 mean of segments 1..n."""
    flat = features.reshape(-1, features.shape[-1]).astype(np.float32)
    onehot = labels.ravel()[None, :] == np.arange(1, n + 1)[:, None]  # (n, h*w)
    counts = np.maximum(onehot.sum(axis=1, keepdims=True), 1)
    return (onehot.astype(np.float32) @ flat) / counts
