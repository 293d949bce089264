"""Where an eigenvector cell lies in the original image, and grid arrays brought to pixels.

The backbone resizes the image (PIL, whole image to round(H·s) × round(W·s), s = long_side /
max(H, W)) and crops bottom/right to a patch multiple, so cell (i, j) of a (grid_h, grid_w)
grid covers input pixels [i·c_h, (i+1)·c_h) × [j·c_w, (j+1)·c_w), c = input size / grid size
(the patch size, or patch / upsample), and original pixel = input pixel / scale per axis.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GridGeometry:
    grid_h: int
    grid_w: int
    height: int  # original image, after EXIF rotation
    width: int
    cell_h: float  # input pixels per grid cell
    cell_w: float
    scale_y: float  # input pixels per original pixel
    scale_x: float


def resized_size(height: int, width: int, long_side: int | None) -> tuple[int, int]:
    """(h, w) the backbone resized an (height, width) image to, before the crop."""
    if not long_side:
        return height, width
    s = long_side / max(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


def geometry_of(row: dict, long_side: int | None) -> GridGeometry:
    """A shard row (pipeline.io.schema) and the run's BackboneConfig.long_side -> its geometry.

    The row stores the cropped input size, not the resize factor; the factor is recomputed
    exactly as pipeline.features.backbones.preprocess rounds it.
    """
    h, w = resized_size(row["height"], row["width"], long_side)
    return GridGeometry(
        grid_h=row["grid_h"], grid_w=row["grid_w"], height=row["height"], width=row["width"],
        cell_h=row["input_height"] / row["grid_h"], cell_w=row["input_width"] / row["grid_w"],
        scale_y=h / row["height"], scale_x=w / row["width"],
    )


def cells_to_box(geom: GridGeometry, i0: int, j0: int, i1: int, j1: int) -> np.ndarray:
    """Cells rows [i0, i1) × cols [j0, j1) -> float box [x0, y0, x1, y1] in original pixels
    (continuous coordinates: a box covering pixel columns 0..9 is [0, 10)), clipped to the image."""
    box = np.array([j0 * geom.cell_w / geom.scale_x, i0 * geom.cell_h / geom.scale_y,
                    j1 * geom.cell_w / geom.scale_x, i1 * geom.cell_h / geom.scale_y])
    return np.clip(box, 0, [geom.width, geom.height, geom.width, geom.height])


def _axis_weights(n_out: int, n_cells: int, cell: float, scale: float, bilinear: bool) -> np.ndarray:
    """(n_out, n_cells) interpolation weights from cells to original pixels along one axis.

    Pixel centres map to (p + 0.5)·scale input pixels; pixels in the strip the crop removed
    take the last cell, so a mask covers the whole image.
    """
    pos = (np.arange(n_out) + 0.5) * scale / cell  # in cells
    weights = np.zeros((n_out, n_cells))
    if not bilinear:
        weights[np.arange(n_out), np.clip(np.floor(pos).astype(int), 0, n_cells - 1)] = 1
        return weights
    pos = np.clip(pos - 0.5, 0, n_cells - 1)  # cell centres at integers
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_cells - 1)
    frac = pos - lo
    np.add.at(weights, (np.arange(n_out), lo), 1 - frac)
    np.add.at(weights, (np.arange(n_out), hi), frac)
    return weights


def grid_to_pixels(values: np.ndarray, geom: GridGeometry, bilinear: bool = True) -> np.ndarray:
    """(grid_h, grid_w) -> (height, width) float64 over the original image: nearest cell, or
    bilinear between cell centres (clamped at the edges)."""
    rows = _axis_weights(geom.height, geom.grid_h, geom.cell_h, geom.scale_y, bilinear)
    cols = _axis_weights(geom.width, geom.grid_w, geom.cell_w, geom.scale_x, bilinear)
    values = np.asarray(values, dtype=np.float64)
    if not bilinear:  # one-hot weights: a gather, not two matrix products (BLAS threads cost 30x here)
        return values[np.argmax(rows, axis=1)][:, np.argmax(cols, axis=1)]
    return rows @ values @ cols.T


def pixel_cells(geom: GridGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(rows (height, grid_h), cols (width, grid_w)) one-hot: the cell each original pixel row
    and column falls in (grid_to_pixels' nearest-cell rule), to bring pixel masks to the grid."""
    return (_axis_weights(geom.height, geom.grid_h, geom.cell_h, geom.scale_y, False),
            _axis_weights(geom.width, geom.grid_w, geom.cell_w, geom.scale_x, False))
