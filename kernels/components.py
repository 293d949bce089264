"""Connected components of a sparse graph, and the null space of its normalised Laplacian.

A graph in c components has eigenvalue 0 of L exactly c times, once per component with the
component's sqrt(d) as its vector. Found first, these pairs are known exactly, and every
component is then connected: no solver has to find an eigenvalue's copies (the case
single-vector Lanczos silently got wrong on KNN graphs in pieces).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

from kernels.backend import array_module, to_numpy


def component_labels(W) -> tuple[int, np.ndarray]:
    """Sparse W (N, N), NumPy or CuPy -> (count, labels (N,) int on the host).

    Only entries > 0 are edges (explicit zeros are not). On CuPy the structure is copied to
    the host once (O(nnz)): scipy.sparse.csgraph runs there, and the labels only index.
    """
    W = to_numpy(W).tocsr()
    edges = scipy.sparse.csr_matrix((W.data > 0, W.indices, W.indptr), shape=W.shape)
    edges.eliminate_zeros()
    count, labels = scipy.sparse.csgraph.connected_components(edges, directed=False)
    return int(count), labels


def null_space_complement(sqrt_d, labels, count: int, v0, m: int):
    """The first m vectors (N, m') of an orthonormal basis of span{sqrt(d) on component c}
    minus v0 (unit, = their sum's direction), m' = min(m, components with edges - 1).

    One Householder reflection of the (c,) weights of v0: its columns other than the first
    are orthonormal and orthogonal to v0, and only m of them are formed (c may be large).
    """
    xp = array_module(v0)
    labels_x = xp.asarray(labels)
    norms = xp.bincount(labels_x, weights=sqrt_d * sqrt_d, minlength=count) ** 0.5
    live = xp.flatnonzero(norms > 0)  # components without edges (isolated nodes) have none
    alpha = norms[live] / xp.linalg.norm(norms[live])  # v0 = sum_c alpha_c u_c
    c = int(live.shape[0])
    take = min(m, c - 1)
    if take <= 0:
        return xp.zeros((sqrt_d.shape[0], 0))
    # H = I - 2 w w^T with H alpha = e_0; columns 1..take of H are the coefficients wanted.
    w = alpha.copy()
    w[0] += 1.0 if float(alpha[0]) >= 0 else -1.0
    w /= xp.linalg.norm(w)
    H = -2.0 * w[:, None] * w[None, 1:take + 1]
    H[xp.arange(1, take + 1), xp.arange(take)] += 1.0
    # Vector j = sum_c H[c, j] u_c, u_c = sqrt(d) on component c / norms[c].
    position = xp.full(count, -1, dtype=xp.int64)
    position[live] = xp.arange(c)
    rows = position[labels_x]
    coef = xp.where(rows[:, None] >= 0, H[xp.maximum(rows, 0)], 0.0)
    scale = xp.where(norms[labels_x] > 0, sqrt_d / xp.where(norms[labels_x] > 0, norms[labels_x], 1.0), 0.0)
    return coef * scale[:, None]
