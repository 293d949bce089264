"""The affinity graph of one image: W = max(f̂ f̂ᵀ, 0) + λ_knn · W_knn.

Array-module generic: features on the GPU (CuPy) give a graph on the GPU.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from kernels.backend import array_module, scipy_module
from kernels.knn_affinity import knn_colour_affinity
from pipeline.config import GraphConfig


def upsample_features(features, factor: int):
    """(h, w, C) -> (h·factor, w·factor, C), bilinear with half-pixel centres (align_corners=False)."""
    if factor == 1:
        return features
    xp = array_module(features)
    out = features
    for axis in (0, 1):
        size = out.shape[axis]
        pos = (xp.arange(size * factor, dtype=xp.float64) + 0.5) / factor - 0.5
        pos = xp.clip(pos, 0, size - 1)
        lo = xp.floor(pos).astype(xp.int64)
        hi = xp.minimum(lo + 1, size - 1)
        frac = (pos - lo).astype(out.dtype)
        shape = [1, 1, 1]
        shape[axis] = -1
        frac = frac.reshape(shape)
        out = xp.take(out, lo, axis=axis) * (1 - frac) + xp.take(out, hi, axis=axis) * frac
    return out


def feature_affinity(features, topk: int | None = None):
    """(N, C) features -> W (N, N) = max(f̂ f̂ᵀ, 0), f̂ the L2-normalised rows.

    Dense by default. With `topk`, each row keeps its top-k entries and W = max(W, Wᵀ) is
    returned as CSR: a different graph, chosen explicitly for grids too large for dense.
    """
    xp = array_module(features)
    f = features.astype(xp.float32)
    f = f / xp.maximum(xp.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    # The N×N×C product is the graph's whole cost: float32 halves it, and cosines need no more
    # than float32's 1e-7; the eigensolver gets float64 so its residuals can reach 1e-10.
    W = xp.maximum(f @ f.T, 0.0).astype(xp.float64)
    if topk is None or topk >= W.shape[0]:
        return W
    sparse = scipy_module(features).sparse
    n = W.shape[0]
    cols = xp.argpartition(-W, topk - 1, axis=1)[:, :topk]
    rows = xp.repeat(xp.arange(n), topk)
    vals = xp.take_along_axis(W, cols, axis=1).ravel()
    top = sparse.csr_matrix((vals, (rows, cols.ravel())), shape=(n, n))
    return top.maximum(top.T).tocsr()


def image_on_grid(image: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) float64 in [0, 1], box-averaged onto the patch grid."""
    h, w = grid_hw
    small = Image.fromarray(image).resize((w, h), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64) / 255.0


def image_affinity(features, image: np.ndarray, cfg: GraphConfig):
    """(h, w, C) features and the (H, W, 3) image they came from -> W (h·w, h·w).

    The colour graph uses the image resampled to the feature grid. With
    knn_scale="relative" it is rescaled to the feature graph's mean degree first, so that
    λ_knn weighs two graphs of comparable size (FINDINGS: the raw 0/1 graph has degrees in
    the hundreds and swamps the features at λ = 10).
    """
    xp = array_module(features)
    h, w, c = features.shape
    W = feature_affinity(features.reshape(h * w, c), cfg.sparsify_topk)
    if cfg.knn_lambda == 0:
        return W
    colour = xp.asarray(image_on_grid(image, (h, w)))
    W_knn = knn_colour_affinity(colour, cfg.knn_neighbors, cfg.knn_spatial_weights)
    weight = cfg.knn_lambda
    if cfg.knn_scale == "relative":
        weight *= float(W.sum()) / max(float(W_knn.sum()), 1e-12)
    elif cfg.knn_scale != "absolute":
        raise ValueError(f"knn_scale must be 'relative' or 'absolute', got {cfg.knn_scale!r}")
    if isinstance(W, xp.ndarray):
        return W + weight * W_knn.toarray()
    return (W + weight * W_knn).tocsr()
