"""The pixel feature Laplacian L_feature = D - W: the patch feature affinity brought to pixels
and kept sparse (kernels.feature_laplacian: bilinearly interpolated ViT features, each pixel
linked to the pixels of a small dilated window, weight max(cos, 0) ** power).
"""
from __future__ import annotations

import numpy as np

from kernels.feature_laplacian import interpolation_axis, laplacian_rows, pixel_feature_affinity, window_offsets
from pipeline.matting.config import MattingConfig
from pipeline.matting.grid import FeatureGrid
from pipeline.matting.trimap import cell_pixels


def feature_laplacian_rows(grid: FeatureGrid, cfg: MattingConfig, rows=None):
    """Rows (M, N) of the pixel feature Laplacian D - W over grid.geom's image (rows: flat
    pixel indices, default all)."""
    g = grid.geom
    axis_y = interpolation_axis(g.height, g.grid_h, g.cell_h, g.scale_y)
    axis_x = interpolation_axis(g.width, g.grid_w, g.cell_w, g.scale_x)
    stride = max(1, round(cfg.feature_stride * cell_pixels(g)))
    if rows is None:
        rows = np.arange(g.height * g.width)
    W = pixel_feature_affinity(grid.features, axis_y, axis_x, window_offsets(cfg.feature_radius, stride),
                               rows=rows, power=cfg.feature_power)
    return laplacian_rows(W, rows)
