"""Top-k cosine graph of N feature vectors without an N x N matrix, array-module generic.

W keeps, for every node, its k largest entries of max(f_i . f_j, 0) over L2-normalised
features (itself included: cos = 1), and is symmetrised by max(W, W^T): the same graph as
sparsifying the dense affinity (pipeline.spectral.affinity.topk_graph), built in row blocks.

Exact brute force by matrix products (one GEMM per block, then argpartition), so time is
O(N^2 C) but memory is O(block * N + N * k): the block's rows are chosen so that one block of
scores holds at most `budget` entries. NumPy or CuPy, from the input.
"""
from __future__ import annotations

from kernels.backend import array_module, scipy_module

# Entries of one block of scores (float32): 2^24 = 64 MB, small next to N * k at large N.
BLOCK_ENTRIES = 1 << 24


def block_rows(n: int, budget: int = BLOCK_ENTRIES) -> int:
    """Rows per block so that a (rows, n) block holds at most `budget` entries (>= 1 row)."""
    return max(1, budget // max(n, 1))


def topk_neighbors(f, k: int, budget: int = BLOCK_ENTRIES):
    """Normalised f (N, C) -> (indices (N, k), scores (N, k)) of each row's k largest f_i . f_j.

    The block's scores are computed, reduced to k by argpartition and dropped, so no more
    than `budget` scores exist at once.
    """
    xp = array_module(f)
    n = f.shape[0]
    k = min(k, n)
    step = block_rows(n, budget)
    cols, vals = [], []
    for start in range(0, n, step):
        scores = f[start:start + step] @ f.T
        # A copy: the slice alone is a view that would keep the block's whole (rows, N)
        # int64 argpartition result alive, i.e. O(N^2) memory over all blocks.
        part = xp.argpartition(-scores, k - 1, axis=1)[:, :k].copy()
        cols.append(part)
        vals.append(xp.take_along_axis(scores, part, axis=1))
        del scores
    return xp.concatenate(cols), xp.concatenate(vals)


def topk_cosine_graph(features, k: int, budget: int = BLOCK_ENTRIES):
    """Features (N, C) -> float32 CSR W (N, N): each row's top-k of max(cos, 0), W = max(W, W^T).

    Entries <= 0 are not stored (a negative cosine is no edge), so a row may hold fewer than
    k entries and every stored entry is > 0 (what connected-components counting relies on).
    """
    xp, sparse = array_module(features), scipy_module(features).sparse
    if features.ndim != 2:
        raise ValueError(f"features must be (N, C), got shape {features.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = features.shape[0]
    f = features.astype(xp.float32)
    f = f / xp.maximum(xp.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    cols, vals = topk_neighbors(f, k, budget)
    rows = xp.repeat(xp.arange(n), cols.shape[1])
    keep = vals.ravel() > 0
    top = sparse.csr_matrix((vals.ravel()[keep], (rows[keep], cols.ravel()[keep])), shape=(n, n))
    return top.maximum(top.T).tocsr()
