"""The guided filter (He, Sun and Tang, ECCV 2010 / TPAMI 2013) with plain NumPy box filters.

Edge-aware smoothing of p by a guide I: within every (2r+1)² window, q is locally linear in I,
q = a·I + b, fitted by ridge regression (eps). A blocky mask upsampled from the patch grid
snaps to the image's edges, and its output is a soft map in about [0, 1].
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def box_mean(x: np.ndarray, r: int) -> np.ndarray:
    """(H, W, ...) -> mean over the (2r+1)² window around each pixel, clipped at the borders
    (windows near the edge average fewer pixels, not zero padding)."""
    h, w = x.shape[:2]
    size = 2 * r + 1
    # Separable running means in SciPy's C loops (zeros outside), then rescaled by the number
    # of pixels each window really holds: 3x faster than gathering from a 2-D cumulative sum.
    total = ndimage.uniform_filter1d(np.asarray(x, dtype=np.float64), size, axis=0, mode="constant")
    total = ndimage.uniform_filter1d(total, size, axis=1, mode="constant")
    rows = np.minimum(np.arange(h) + r + 1, h) - np.maximum(np.arange(h) - r, 0)
    cols = np.minimum(np.arange(w) + r + 1, w) - np.maximum(np.arange(w) - r, 0)
    return total * (size * size / (rows[:, None] * cols[None, :])).reshape((h, w) + (1,) * (x.ndim - 2))


def guided_filter(guide: np.ndarray, p: np.ndarray, r: int = 16, eps: float = 1e-2) -> np.ndarray:
    """guide (H, W) or (H, W, 3) in [0, 1], p (H, W) or a stack (H, W, L) -> filtered, float64,
    shaped like p.

    A colour guide fits q = aᵀI + b with a 3×3 covariance per window (sharper on edges that
    differ in colour but not in brightness); a grey guide is the scalar case. A stack of maps
    (e.g. one indicator per class) shares the guide's statistics and the per-pixel solve.
    """
    guide = np.asarray(guide, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    stacked = p.ndim == 3
    p = p if stacked else p[..., None]  # (H, W, L)
    mean_p = box_mean(p, r)
    if guide.ndim == 2:
        g = guide[..., None]
        mean_i = box_mean(guide, r)[..., None]
        cov_ip = box_mean(g * p, r) - mean_i * mean_p
        var_i = box_mean(guide * guide, r)[..., None] - mean_i ** 2
        a = cov_ip / (var_i + eps)
        b = mean_p - a * mean_i
        q = box_mean(a, r) * g + box_mean(b, r)
        return q if stacked else q[..., 0]
    mean_i = box_mean(guide, r)  # (H, W, 3)
    cov_ip = box_mean(guide[..., :, None] * p[..., None, :], r) - mean_i[..., :, None] * mean_p[..., None, :]
    outer = guide[..., :, None] * guide[..., None, :]  # (H, W, 3, 3)
    sigma = box_mean(outer, r) - mean_i[..., :, None] * mean_i[..., None, :]
    a = np.linalg.solve(sigma + eps * np.eye(3), cov_ip)  # (H, W, 3, L)
    b = mean_p - np.einsum("hwcl,hwc->hwl", a, mean_i)
    q = np.einsum("hwcl,hwc->hwl", box_mean(a, r), guide) + box_mean(b, r)
    return q if stacked else q[..., 0]
