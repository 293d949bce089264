"""The affinity graph of one image: W = max(f̂ f̂ᵀ, 0) + λ_knn · W_knn.

Array-module generic: features on the GPU (CuPy) give a graph on the GPU.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from kernels.backend import array_module, scipy_module
from kernels.knn_affinity import knn_colour_affinity
from kernels.lowrank import LowRankGraph, lowrank_graph
from kernels.topk_affinity import topk_cosine_graph
from pipeline.config import SPARSE_DEFAULT_TOPK, GraphConfig


def bilinear_matrix(size: int, factor: int, xp=np):
    """(size·factor, size) weights of 1-D bilinear upsampling with half-pixel centres
    (align_corners=False, as torch's interpolate): two non-zeros per row, rows sum to 1."""
    pos = xp.clip((xp.arange(size * factor, dtype=xp.float64) + 0.5) / factor - 0.5, 0, size - 1)
    lo = xp.floor(pos).astype(xp.int64)
    hi = xp.minimum(lo + 1, size - 1)
    frac = pos - lo
    P = xp.zeros((size * factor, size))
    rows = xp.arange(size * factor)
    P[rows, lo] += 1 - frac
    P[rows, hi] += frac
    return P


def upsampling_operator(h: int, w: int, factor: int, like):
    """Sparse (h·w·factor², h·w) matrix that upsamples a row-major (h, w) grid bilinearly."""
    xp, sparse = array_module(like), scipy_module(like).sparse
    P_h = sparse.csr_matrix(bilinear_matrix(h, factor, xp))
    P_w = sparse.csr_matrix(bilinear_matrix(w, factor, xp))
    return sparse.kron(P_h, P_w, format="csr")


def upsample_features(features, factor: int):
    """(h, w, C) -> (h·factor, w·factor, C), bilinear with half-pixel centres."""
    if factor == 1:
        return features
    h, w, c = features.shape
    P = upsampling_operator(h, w, factor, features).astype(features.dtype)
    return (P @ features.reshape(h * w, c)).reshape(h * factor, w * factor, c)


def feature_affinity(features, upsample: int = 1, topk: int | None = None):
    """(h, w, C) features -> float32 W (N, N) = max(f̂ f̂ᵀ, 0), N = h·w·upsample², f̂ the L2-normalised
    features after bilinear upsampling by `upsample` (the reference's finer cells).

    The upsampled Gram matrix is P (f fᵀ) Pᵀ for the sparse bilinear operator P, so it is
    computed on the coarse grid and interpolated: at upsample 2 that is ~100× fewer flops than
    forming the upsampled features, and the same matrix. Dense by default; with `topk`, each
    row keeps its top-k entries and W = max(W, Wᵀ) is returned as CSR: a different graph,
    chosen explicitly for grids too large for dense.
    """
    xp = array_module(features)
    h, w, c = features.shape
    # float32 throughout: the N×N products dominate, cosines need no more than float32's 1e-7,
    # and the Krylov eigensolver iterates in float32 anyway (it takes W as it is).
    f = features.reshape(h * w, c).astype(xp.float32)
    if upsample == 1:
        f /= xp.maximum(xp.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        W = f @ f.T  # exactly symmetric (BLAS syrk)
    else:
        P = upsampling_operator(h, w, upsample, features).astype(xp.float32)
        PG = P @ (f @ f.T)
        # Normalising the upsampled features = scaling P's rows by 1 / ||P f||, where
        # ||P f||² = diag(P G Pᵀ) = rowsum(P ∘ P G): the N'×N' product comes out normalised.
        inv_norm = 1.0 / xp.sqrt(xp.maximum(xp.asarray(P.multiply(PG).sum(axis=1)).ravel(), 1e-24))
        PG *= inv_norm[:, None]
        W = P @ xp.ascontiguousarray(PG.T)  # SciPy's sparse @ dense is ~1.6x slower on a transposed view
        W *= inv_norm[:, None]
    W = xp.maximum(W, 0.0, out=W)
    if topk is None or topk >= W.shape[0]:
        return W
    return topk_graph(W, topk)


def batched_feature_affinity(features: list):
    """(h_i, w_i, C) features of B images, one array module -> (the zero-padded (B, N, N)
    float32 stack of their feature_affinity graphs, N = max h_i·w_i, from one batched matmul;
    (B,) node counts). Image i's graph is stack[i, :n_i, :n_i]; its padding rows and columns
    are 0, isolated nodes that kernels.batched_eigensolver leaves out. The default graph only
    (no upsampling, no top-k, no colour term): what a GPU batch builds in one GEMM."""
    xp = array_module(features[0])
    sizes = [f.shape[0] * f.shape[1] for f in features]
    c = features[0].shape[-1]
    F = xp.zeros((len(features), max(sizes), c), dtype=xp.float32)
    for i, f in enumerate(features):
        F[i, :sizes[i]] = f.reshape(sizes[i], c)
    F /= xp.maximum(xp.linalg.norm(F, axis=2, keepdims=True), 1e-12)  # padding rows stay 0
    W = xp.matmul(F, xp.swapaxes(F, 1, 2))
    return xp.maximum(W, 0.0, out=W), sizes


def sparse_feature_affinity(features, upsample: int = 1, topk: int | None = None):
    """(h, w, C) features -> float32 CSR W (N, N), N = h·w·upsample²: each node's top-k
    (default SPARSE_DEFAULT_TOPK) of max(f̂ f̂ᵀ, 0), symmetrised by max(W, Wᵀ).

    The graph of feature_affinity(features, upsample, topk) built without any N×N matrix:
    the upsampled features (N×C) go through kernels.topk_affinity in row blocks.
    """
    h, w, c = features.shape
    f = upsample_features(features.astype(array_module(features).float32), upsample)
    return topk_cosine_graph(f.reshape(-1, c), topk or SPARSE_DEFAULT_TOPK)


def lowrank_feature_affinity(features, upsample: int = 1, topk: int | None = None) -> LowRankGraph:
    """(h, w, C) features -> W = f̂ f̂ᵀ + s (kernels.lowrank), N = h·w·upsample², never formed:
    the cosines shifted by s = -min f̂ f̂ᵀ instead of clipped at 0, so W has rank C + 1 and its
    eigenpairs come exactly from the (N, C) features (`topk` is not used)."""
    xp = array_module(features)
    h, w, c = features.shape
    f = upsample_features(features.astype(xp.float32), upsample).reshape(-1, c)
    return lowrank_graph(f / xp.maximum(xp.linalg.norm(f, axis=1, keepdims=True), 1e-12))


# GraphConfig.kind -> (features, upsample, topk) -> W.
GRAPH_BUILDERS = {"dense": feature_affinity, "sparse": sparse_feature_affinity, "lowrank": lowrank_feature_affinity}


def topk_graph(W, topk: int):
    """Dense (N, N) W -> CSR keeping each row's top-k entries, symmetrised by max(W, Wᵀ)."""
    xp, sparse = array_module(W), scipy_module(W).sparse
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
    """(h, w, C) backbone features and the (H, W, 3) image they came from -> W (N, N),
    N = h·w·cfg.upsample².

    The colour graph uses the image resampled to the (upsampled) grid. With
    knn_scale="relative" it is rescaled to the feature graph's mean degree first, so that
    λ_knn weighs two graphs of comparable size (the raw 0/1 graph has degrees in the hundreds
    and swamps the features at the reference's λ = 10: docs/extract.md).
    """
    xp = array_module(features)
    h, w = features.shape[0] * cfg.upsample, features.shape[1] * cfg.upsample
    if cfg.kind not in GRAPH_BUILDERS:
        raise ValueError(f"graph kind must be one of {sorted(GRAPH_BUILDERS)}, got {cfg.kind!r}")
    if cfg.kind == "lowrank" and cfg.knn_lambda != 0:
        raise ValueError("graph kind 'lowrank' takes no colour term (knn_lambda must be 0): "
                         "W + λ·W_knn is not of low rank")
    W = GRAPH_BUILDERS[cfg.kind](features, cfg.upsample, cfg.sparsify_topk)
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
