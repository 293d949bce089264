"""Soft foreground layers at full resolution: the paper's fused Laplacian, solved for alpha.

    L = L_colour + lambda' L_feature

L_colour is pymatting's closed-form matting Laplacian (Levin et al. 2008, `cf_laplacian`).
L_feature = D - W is the patch feature affinity brought to pixels and kept sparse
(kernels.feature_laplacian: bilinearly interpolated ViT features, each pixel linked to the
pixels of a small dilated window, weight max(cos, 0) ** power). lambda' = feature_weight x
(mean diagonal of L_colour / mean degree of W) over the unknown pixels, so feature_weight = 1
means "as strong as the colour term" whatever the image; 0 is plain closed-form matting.

Alpha comes from one of two solvers:
  "cg"        the constrained quadratic problem min a^T L a with a fixed on the trimap's known
              pixels: L_UU a_U = -L_UK a_K (pymatting's estimate_alpha_cf formulation, exact
              constraints), by preconditioned CG, on CuPy when asked (kernels.pcg).
  "spectral"  spectral matting: the k smallest eigenvectors of L (the soft layers; Levin,
              Rav-Acha and Lischinski 2008 show mattes lie near their span) computed on the
              image scaled to `spectral_max_side`, alpha = the combination of layers that
              best fits the known pixels, upsampled. The layers come from the closed-form
              Laplacian (shift-invert eigsh) or, with spectral_graph="knn", from the KNN colour
              graph by the extraction's sparse eigensolver (no factorisation).
The trimap is given (trimap mode) or made from the Fiedler vector (automatic mode,
pipeline.matting.trimap). Everything is sparse: memory is O(pixels x stencil), never pixels^2.

This module composes the stage; each algorithm has its own file: config.py (MattingConfig and
the run digest), grid.py (the backbone's FeatureGrid, Fiedler vectors), laplacian/closed_form.py,
laplacian/features.py, laplacian/fused.py, alpha/cg.py, alpha/spectral.py, resize.py (working
sizes) and trimap.py.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from kernels.pcg import PRECONDITIONERS
from pipeline.matting.alpha.cg import solve_alpha_cg
from pipeline.matting.alpha.spectral import alpha_from_layers, spectral_layers
from pipeline.matting.config import SOLVERS, MattingConfig
from pipeline.matting.grid import FeatureGrid, feature_grid, fiedler_vectors
from pipeline.matting.resize import alpha_at_full_size, fit_long_side, resize_image, resize_trimap
from pipeline.matting.trimap import auto_trimap


@dataclass
class MattingResult:
    alpha: np.ndarray  # (H, W) float32 in [0, 1]
    trimap: np.ndarray  # (H, W) float64 {0, 0.5, 1}: given, or automatic
    foreground: np.ndarray | None = None  # (H, W, 3) float32 in [0, 1] (estimate_foreground_ml)
    layers: np.ndarray | None = None  # (k, h, w) spectral layers at the spectral size
    info: dict = field(default_factory=dict)  # seconds per stage, iterations, sizes


def estimate_alpha(image: np.ndarray, trimap: np.ndarray, cfg: MattingConfig,
                   grid: FeatureGrid | None = None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(H, W, 3) uint8, (H, W) trimap -> ((H, W) alpha, spectral layers or None, info).

    Solves at the cfg.max_side working size (spectral: cfg.spectral_max_side), upsamples, and
    keeps the full-resolution trimap's known pixels.
    """
    if cfg.solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {cfg.solver!r}")
    if cfg.preconditioner not in PRECONDITIONERS:
        raise ValueError(f"preconditioner must be one of {PRECONDITIONERS}, got {cfg.preconditioner!r}")
    height, width = image.shape[:2]
    side = cfg.max_side
    if cfg.solver == "spectral":
        side = min(side or cfg.spectral_max_side, cfg.spectral_max_side)
    size = fit_long_side(height, width, side)
    work = resize_image(image, size).astype(np.float64) / 255.0
    work_trimap = resize_trimap(trimap, size)
    layers = None
    if cfg.solver == "cg":
        alpha, info = solve_alpha_cg(work, work_trimap, cfg, grid)
    else:
        t0 = time.perf_counter()
        layers, values = spectral_layers(work, cfg, grid)
        t1 = time.perf_counter()
        alpha = alpha_from_layers(layers, values, work_trimap)
        info = {"seconds_eigs": t1 - t0, "seconds_solve": time.perf_counter() - t1,
                "eigenvalues": values.tolist()}
    if size != (height, width):
        alpha = alpha_at_full_size(alpha, trimap)
    info["work_size"] = list(size)
    return alpha.astype(np.float32), layers, info


def matte(image: np.ndarray, cfg: MattingConfig = MattingConfig(), backbone=None,
          trimap: np.ndarray | None = None) -> MattingResult:
    """(H, W, 3) uint8 -> MattingResult. Without `trimap` (automatic mode) the trimap comes
    from the Fiedler vector, which needs `backbone` (pipeline.features.backbones.Backbone), as does
    fusion (feature_weight > 0)."""
    info: dict = {}
    t0 = time.perf_counter()
    grid = None
    if trimap is None or cfg.feature_weight > 0:
        if backbone is None:
            raise ValueError("automatic trimaps and fusion need a backbone")
        size = fit_long_side(*image.shape[:2], cfg.max_side)
        # Features of the working image: the backbone resizes to its long side anyway.
        grid = feature_grid(backbone, resize_image(image, size)).at_size(*image.shape[:2])
    info["seconds_features"] = time.perf_counter() - t0
    if trimap is None:
        t1 = time.perf_counter()
        trimap = auto_trimap(fiedler_vectors(grid), grid.geom, cfg.trimap, image)
        info["seconds_trimap"] = time.perf_counter() - t1
    if trimap.shape != image.shape[:2]:
        raise ValueError(f"trimap {trimap.shape} does not match the image {image.shape[:2]}")
    alpha, layers, solve_info = estimate_alpha(image, trimap, cfg, grid)
    info.update(solve_info)
    foreground = None
    if cfg.estimate_foreground:
        from pymatting import estimate_foreground_ml

        t2 = time.perf_counter()
        foreground = estimate_foreground_ml(image.astype(np.float64) / 255.0, alpha.astype(np.float64))
        foreground = np.clip(foreground, 0, 1).astype(np.float32)
        info["seconds_foreground"] = time.perf_counter() - t2
    info["seconds_total"] = time.perf_counter() - t0
    return MattingResult(alpha=alpha, trimap=trimap, foreground=foreground, layers=layers, info=info)


def cutout(foreground: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(H, W, 3) foreground in [0, 1], (H, W) alpha -> (H, W, 4) uint8 RGBA (straight alpha)."""
    rgba = np.concatenate([foreground, alpha[..., None]], axis=2)
    return np.clip(np.round(rgba * 255), 0, 255).astype(np.uint8)
