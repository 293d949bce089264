"""Object localization from oriented eigenvectors: patch mask -> largest component -> box.

Eigenvector 1 (the Fiedler vector) is stored border-oriented (pipeline.spectral.spectrum), so its
positive side is the foreground guess. A box of the Fiedler vector above 0 once measured better
than above its mean (COCO128 CorLoc 50.0 vs 46.8), so 0 stays the default here; masks, and
label's cuts (pipeline.objects.discovery), use the mean, which measured better on the tune/check
halves of COCO128 and VOC07 since (docs/objects-results.md, "Localization and segmentation").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.features.geometry import GridGeometry, cells_to_box

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two [x0, y0, x1, y1] boxes in continuous pixel coordinates (0 if both are empty)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass(frozen=True)
class LocalizeConfig:
    # Patch threshold on the Fiedler vector: a number, or "mean".
    threshold: float | str = 0.0
    # Further boxes (COCO results): components of eigenvectors 1..n_vectors ...
    n_vectors: int = 3
    # ... covering at least this fraction of the grid, ...
    min_area: float = 0.02
    # ... after dropping boxes that overlap a better-scored one this much.
    nms_iou: float = 0.7


def foreground_mask(vec: np.ndarray, threshold: float | str = 0.0) -> tuple[np.ndarray, bool]:
    """(h, w) oriented eigenvector -> ((h, w) bool mask vec > t, whether it fell back).

    An empty or full mask carries no object (a constant or degenerate vector, e.g. on a grid of
    one patch): it falls back to the whole image, the box a detector without an opinion gives,
    and never an empty box that metrics would have to special-case.
    """
    t = float(np.mean(vec)) if threshold == "mean" else float(threshold)
    mask = vec > t
    if mask.all() or not mask.any():
        return np.ones(vec.shape, dtype=bool), True
    return mask, False


def components(mask: np.ndarray, weights: np.ndarray | None = None) -> list[np.ndarray]:
    """(h, w) bool -> its 8-connected components as bool masks, largest first; equal sizes
    are ordered by the larger sum of `weights` (e.g. the eigenvector), then by position."""
    labels, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index)
    mass = ndimage.sum_labels(weights, labels, index) if weights is not None else np.zeros(n)
    order = sorted(range(n), key=lambda c: (-sizes[c], -mass[c], c))
    return [labels == c + 1 for c in order]


def largest_component(mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """(h, w) bool -> the largest 8-connected component (empty stays empty)."""
    parts = components(mask, weights)
    return parts[0] if parts else mask.copy()


def mask_cells(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Non-empty (h, w) bool -> its bounding cells (i0, j0, i1, j1), end-exclusive."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def mask_box(mask: np.ndarray, geom: GridGeometry) -> np.ndarray:
    """Non-empty (grid_h, grid_w) bool -> [x0, y0, x1, y1] in original pixels."""
    return cells_to_box(geom, *mask_cells(mask))


@dataclass(frozen=True)
class Localization:
    box: np.ndarray  # (4,) [x0, y0, x1, y1], original pixels: the single-object answer
    mask: np.ndarray  # (grid_h, grid_w) bool, the component the box encloses
    fallback: bool  # the mask was empty or full and became the whole image
    boxes: np.ndarray  # (n, 4) all boxes, best first; boxes[0] == box
    scores: np.ndarray  # (n,) descending, in (0, 1]


def component_candidates(eigenvectors: np.ndarray, cfg: LocalizeConfig,
                         exclude: np.ndarray | None = None) -> list[tuple[float, np.ndarray]]:
    """(k, grid_h, grid_w) oriented eigenvectors -> (score, (grid_h, grid_w) bool) for the
    components of eigenvectors 1..n_vectors above the threshold covering at least `min_area` of
    the grid, best first; a component equal to `exclude` (the Fiedler object) is left out.

    Score: the component's share of its vector's positive mass divided by the vector's index
    (coarser cuts first), capped below 1 so the Fiedler object keeps the top score.
    """
    found = []
    min_cells = cfg.min_area * eigenvectors[0].size
    for index in range(1, min(cfg.n_vectors, len(eigenvectors) - 1) + 1):
        vec = eigenvectors[index]
        mask, degenerate = foreground_mask(vec, cfg.threshold)
        if degenerate:
            continue
        total = float(vec[mask].sum())
        for part in components(mask, vec):
            if part.sum() < min_cells:
                break
            if index == 1 and exclude is not None and np.array_equal(part, exclude):
                continue
            found.append((min(float(vec[part].sum()) / total / index, 0.999), part))
    found.sort(key=lambda c: -c[0])
    return found


def localize(eigenvectors: np.ndarray, geom: GridGeometry, cfg: LocalizeConfig = LocalizeConfig()) -> Localization:
    """(k, grid_h, grid_w) oriented eigenvectors -> the Fiedler box and further scored boxes.

    The main box is the largest component of eigenvector 1 above the threshold (score 1);
    further boxes are `component_candidates`, then greedy NMS.
    """
    fiedler = eigenvectors[1] if len(eigenvectors) > 1 else np.zeros(eigenvectors.shape[1:])
    fmask, fallback = foreground_mask(fiedler, cfg.threshold)
    main = largest_component(fmask, fiedler)
    candidates = [(1.0, mask_box(main, geom))]
    candidates += [(score, mask_box(part, geom)) for score, part in component_candidates(eigenvectors, cfg, main)]
    keep: list[tuple[float, np.ndarray]] = []
    for score, box in candidates:
        if all(box_iou(box, kept) < cfg.nms_iou for _, kept in keep):
            keep.append((score, box))
    return Localization(box=candidates[0][1], mask=main, fallback=fallback,
                        boxes=np.array([b for _, b in keep]), scores=np.array([s for s, _ in keep]))
