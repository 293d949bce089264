"""Pixel-resolution feature affinity from patch features, sparse, array-module generic.

Each pixel's feature is the bilinear interpolation of the patch features at the cell centres
around it, f_i = sum_a w_ia g_a (four cells a, weights w_ia from the two 1-D interpolations).
Pixels link to the pixels at a fixed set of offsets (a window, optionally dilated) with weight
max(cos(f_i, f_j), 0) ** power: the patch graph's affinity, brought to pixels and sparsified.

Nothing of size N x C or N x N is formed (N pixels, C channels). Since f_i . f_j =
sum_ab w_ia w_jb G_ab with the coarse Gram matrix G = g g^T (cells x cells, ~700 x 700 at the
default grid), every edge is 16 gathers from G: exact, and O(N * offsets) memory in chunks.

    axis_y = interpolation_axis(H, grid_h, cell_h, scale_y)
    axis_x = interpolation_axis(W, grid_w, cell_w, scale_x)
    W_rows = pixel_feature_affinity(g, axis_y, axis_x, window_offsets(1, 7), rows=unknown)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels.backend import array_module, scipy_module


@dataclass(frozen=True)
class Axis:
    """Bilinear weights along one axis: pixel p lies between cells lo[p] and hi[p], with
    weight 1 - frac[p] on lo and frac[p] on hi. Arrays (n_pixels,)."""

    lo: object
    hi: object
    frac: object

    @property
    def size(self) -> int:
        return int(self.lo.shape[0])


def interpolation_axis(n_pixels: int, n_cells: int, cell: float, scale: float, xp=np) -> Axis:
    """Pixel centres (p + 0.5) * scale input pixels -> positions between cell centres.

    The same mapping as pipeline.features.geometry.grid_to_pixels (bilinear, clamped at the edges), so
    the strip a patch-multiple crop removed takes the last cell's feature.
    """
    pos = (xp.arange(n_pixels, dtype=xp.float64) + 0.5) * scale / cell - 0.5
    pos = xp.clip(pos, 0, n_cells - 1)
    lo = xp.floor(pos).astype(xp.int64)
    return Axis(lo=lo, hi=xp.minimum(lo + 1, n_cells - 1), frac=pos - lo)


def window_offsets(radius: int, stride: int = 1) -> list[tuple[int, int]]:
    """All (dy, dx) in stride * {-radius..radius}^2 except (0, 0): a symmetric stencil, so the
    graph it builds is symmetric. A stride above 1 reaches across the slowly varying
    interpolated feature field, where neighbouring pixels would all have cosines of ~1."""
    r = range(-radius, radius + 1)
    return [(dy * stride, dx * stride) for dy in r for dx in r if (dy, dx) != (0, 0)]


def _corners(axis_y: Axis, axis_x: Axis, py, px, n_cols: int, xp):
    """Pixel coordinates (M,) -> cell indices (M, 4) and bilinear weights (M, 4)."""
    ys = (axis_y.lo[py], axis_y.hi[py])
    xs = (axis_x.lo[px], axis_x.hi[px])
    fy, fx = axis_y.frac[py], axis_x.frac[px]
    wy, wx = (1 - fy, fy), (1 - fx, fx)
    cells = xp.stack([ys[a] * n_cols + xs[b] for a in (0, 1) for b in (0, 1)], axis=1)
    weights = xp.stack([wy[a] * wx[b] for a in (0, 1) for b in (0, 1)], axis=1)
    return cells, weights.astype(xp.float32)


def _bilinear_dot(G, cells_i, w_i, cells_j, w_j):
    """(M, 4) cells and weights of two pixel sets -> (M,) f_i . f_j from the Gram matrix G."""
    out = 0
    for a in range(4):
        for b in range(4):
            out = out + w_i[:, a] * w_j[:, b] * G[cells_i[:, a], cells_j[:, b]]
    return out


def pixel_feature_affinity(features, axis_y: Axis, axis_x: Axis, offsets, rows=None,
                           power: float = 1.0, chunk: int = 1 << 16):
    """Patch features (gh, gw, C) -> sparse CSR W (len(rows), H*W), pixels row-major.

    Row r holds pixel rows[r]'s links to the pixels at `offsets` inside the image, weighted
    max(cos, 0) ** power of their interpolated features (float32). rows: (M,) flat pixel
    indices, default all. With a symmetric stencil, rows of the full graph are exactly the rows
    of a symmetric matrix, so W[rows][:, rows] is symmetric. Array module from `features`.
    """
    xp = array_module(features)
    sparse = scipy_module(features).sparse
    gh, gw, c = features.shape
    h, w = axis_y.size, axis_x.size
    n = h * w
    g = features.reshape(gh * gw, c).astype(xp.float32)
    G = g @ g.T
    rows = xp.arange(n, dtype=xp.int64) if rows is None else xp.asarray(rows, dtype=xp.int64)
    offsets = list(offsets)
    # 1 / |f_p| for every pixel once (N floats): each edge then costs one 16-term dot product.
    inv_norm = xp.empty(n, dtype=xp.float32)
    for start in range(0, n, chunk):
        p = xp.arange(start, min(n, start + chunk))
        cells, wts = _corners(axis_y, axis_x, p // w, p % w, gw, xp)
        inv_norm[start:start + chunk] = 1 / xp.sqrt(xp.maximum(_bilinear_dot(G, cells, wts, cells, wts), 1e-24))
    out_rows, out_cols, out_vals = [], [], []
    for start in range(0, int(rows.shape[0]), chunk):
        r = rows[start:start + chunk]
        py, px = r // w, r % w
        cells_i, w_i = _corners(axis_y, axis_x, py, px, gw, xp)
        for dy, dx in offsets:
            qy, qx = py + dy, px + dx
            idx = xp.flatnonzero((qy >= 0) & (qy < h) & (qx >= 0) & (qx < w))
            q = qy[idx] * w + qx[idx]
            cells_j, w_j = _corners(axis_y, axis_x, qy[idx], qx[idx], gw, xp)
            cos = _bilinear_dot(G, cells_i[idx], w_i[idx], cells_j, w_j) * inv_norm[r[idx]] * inv_norm[q]
            val = xp.maximum(cos, 0) ** power if power != 1 else xp.maximum(cos, 0)
            out_rows.append(idx + start)
            out_cols.append(q)
            out_vals.append(val.astype(xp.float32))
    if not out_rows:
        return sparse.csr_matrix((int(rows.shape[0]), n), dtype=xp.float32)
    W = sparse.coo_matrix((xp.concatenate(out_vals),
                           (xp.concatenate(out_rows), xp.concatenate(out_cols))),
                          shape=(int(rows.shape[0]), n))
    return W.tocsr()


def laplacian_rows(W_rows, rows):
    """Rows of an affinity, (M, N) sparse with row r = pixel rows[r] -> the same rows of
    D - W: degree on the pixel's own column, minus its links. (M, N) CSR float64."""
    xp = array_module(rows)
    sparse = scipy_module(W_rows).sparse
    m, n = W_rows.shape
    rows = xp.asarray(rows, dtype=xp.int64)
    deg = xp.asarray(W_rows.sum(axis=1)).ravel().astype(xp.float64)
    D = sparse.coo_matrix((deg, (xp.arange(m), rows)), shape=(m, n))
    return (D.tocsr() - W_rows.astype(xp.float64)).tocsr()
