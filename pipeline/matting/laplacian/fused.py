"""The paper's fused Laplacian L = L_colour + lambda' L_feature.

lambda' = feature_weight x (mean diagonal of the colour term / mean diagonal of L_feature),
so feature_weight = 1 means "as strong as the colour term" whatever the image; 0 is plain
closed-form matting. fused_rows gives the unknown pixels' rows (the constrained solve's);
weighted_feature_laplacian the whole scaled feature term (the spectral layers').
"""
from __future__ import annotations

import numpy as np

from pipeline.matting.config import MattingConfig
from pipeline.matting.grid import FeatureGrid
from pipeline.matting.laplacian.closed_form import colour_laplacian
from pipeline.matting.laplacian.features import feature_laplacian_rows
from pipeline.matting.trimap import split


def fused_rows(image: np.ndarray, trimap: np.ndarray, cfg: MattingConfig,
               grid: FeatureGrid | None = None):
    """(H, W, 3) float64 image, (H, W) trimap -> rows of L for the unknown pixels:
    ((M, N) CSR, (M,) their flat indices, lambda')."""
    _, _, unknown = split(trimap)
    rows = np.flatnonzero(unknown)
    L = colour_laplacian(image, cfg, is_known=~unknown)[rows]
    weight = 0.0
    if cfg.feature_weight > 0:
        if grid is None:
            raise ValueError("feature_weight > 0 needs the image's FeatureGrid")
        Lf = feature_laplacian_rows(grid.at_size(*image.shape[:2]), cfg, rows)
        colour_diag = L[:, rows].diagonal()
        weight = cfg.feature_weight * float(colour_diag.mean()) / max(float(Lf[:, rows].diagonal().mean()), 1e-12)
        L = (L + weight * Lf).tocsr()
    return L, rows, weight


def weighted_feature_laplacian(reference, image: np.ndarray, cfg: MattingConfig, grid: FeatureGrid | None):
    """(N, N) reference, (h, w, 3) image -> (N, N) cfg.feature_weight x the pixel feature
    Laplacian D - W, scaled to `reference`'s mean diagonal so that the weight means the same
    on any image."""
    if grid is None:
        raise ValueError("feature_weight > 0 needs the image's FeatureGrid")
    term = feature_laplacian_rows(grid.at_size(*image.shape[:2]), cfg)
    return cfg.feature_weight * float(reference.diagonal().mean()) / max(float(term.diagonal().mean()), 1e-12) * term
