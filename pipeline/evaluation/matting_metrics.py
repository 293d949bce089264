"""Alpha matting errors (Rhemann et al., CVPR 2009, the alphamatting.com benchmark).

All take alphas as floats in [0, 1] and an optional (H, W) bool `region` (the trimap's unknown
pixels, as the benchmark scores; None = the whole image):

  sad   sum |alpha - gt| over the region, / 1000 (the benchmark's reporting unit)
  mse   mean (alpha - gt)^2 over the region's pixels (not scaled)
  grad  sum (|grad alpha| - |grad gt|)^2 over the region, / 1000, gradients by Gaussian
        derivative filters with sigma 1.4 (scipy.ndimage.gaussian_gradient_magnitude, whose
        derivative kernels are normalised Gaussians' derivatives). The benchmark's MATLAB
        filters are normalised differently, so absolute values differ from published ones
        by a constant factor: compare grad only within one table.

Gradients are computed on the whole image before restricting to the region, so pixels next
to the region's edge see their true neighbours.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

GRADIENT_SIGMA = 1.4


def _check(alpha: np.ndarray, gt: np.ndarray, region: np.ndarray | None) -> np.ndarray:
    if alpha.shape != gt.shape:
        raise ValueError(f"alpha {alpha.shape} and ground truth {gt.shape} differ in shape")
    if region is None:
        return np.ones(alpha.shape, dtype=bool)
    if region.shape != alpha.shape:
        raise ValueError(f"region {region.shape} does not match alpha {alpha.shape}")
    return np.asarray(region, dtype=bool)


def sad(alpha: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None) -> float:
    """Sum of absolute differences over the region, / 1000."""
    region = _check(alpha, gt, region)
    return float(np.abs(np.asarray(alpha, np.float64) - gt)[region].sum() / 1000.0)


def mse(alpha: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None) -> float:
    """Mean squared difference over the region's pixels (0 for an empty region)."""
    region = _check(alpha, gt, region)
    if not region.any():
        return 0.0
    return float(np.mean((np.asarray(alpha, np.float64) - gt)[region] ** 2))


def gradient_error(alpha: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None,
                   sigma: float = GRADIENT_SIGMA) -> float:
    """Sum over the region of squared differences of Gaussian gradient magnitudes, / 1000."""
    region = _check(alpha, gt, region)
    ga = ndimage.gaussian_gradient_magnitude(np.asarray(alpha, np.float64), sigma)
    gg = ndimage.gaussian_gradient_magnitude(np.asarray(gt, np.float64), sigma)
    return float(((ga - gg) ** 2)[region].sum() / 1000.0)


def matting_errors(alpha: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None) -> dict:
    """{"sad", "mse", "grad"} of one image."""
    return {"sad": sad(alpha, gt, region), "mse": mse(alpha, gt, region),
            "grad": gradient_error(alpha, gt, region)}
