"""Symmetric normalised graph Laplacian L = D^-1/2 (D - W) D^-1/2 = I - D^-1/2 W D^-1/2."""
from __future__ import annotations

from kernels.backend import array_module, is_sparse, scipy_module


def degrees(W):
    """(N, N) dense or sparse W -> (N,) row sums d, in W's array module.

    A product with ones rather than `W.sum(1)`: the same for every sparse flavour (no
    (N, 1) matrix to squeeze), and on dense NumPy a BLAS gemv is ~2x faster than sum().
    """
    xp = array_module(W)
    return W @ xp.ones(W.shape[0], dtype=W.dtype)


def inverse_sqrt_degrees(d):
    """(N,) degrees -> (N,) d^-1/2, with 0 for isolated nodes (d <= 0).

    Zero rather than inf so that an isolated node drops out of D^-1/2 W D^-1/2 instead of
    poisoning every product with NaN.
    """
    xp = array_module(d)
    connected = d > 0
    return xp.where(connected, 1.0 / xp.sqrt(xp.where(connected, d, 1.0)), 0.0)


def normalized_laplacian(W):
    """Symmetric non-negative W (N, N), dense or sparse -> (L (N, N), d (N,)).

    L = I - D^-1/2 W D^-1/2, the same kind as W: dense stays dense (same dtype), any sparse
    format becomes a CSR matrix, NumPy stays NumPy, CuPy stays CuPy; d = W @ 1 (degrees).

    Isolated nodes (d_i = 0, an all-zero row of W) take d_i^-1/2 = 0, so row and column i of
    L become the unit vector e_i: L e_i = e_i, an eigenvalue 1 that sits inside the bulk of
    the spectrum instead of adding a spurious 0 (a zero-feature patch must not look like a
    separate segment). Symmetry and non-negativity of W are assumed, not checked.
    """
    xp = array_module(W)
    d = degrees(W)
    r = inverse_sqrt_degrees(d)
    n = W.shape[0]
    if is_sparse(W):
        # Scale the stored entries in place of diagonal-matrix products: plain COO indexing
        # that scipy.sparse and cupyx.scipy.sparse share, and one pass over nnz.
        sparse = scipy_module(W).sparse
        coo = W.tocoo()
        scaled = coo.data * r[coo.row] * r[coo.col]
        A = sparse.coo_matrix((scaled.astype(W.dtype, copy=False), (coo.row, coo.col)), shape=W.shape)
        L = sparse.identity(n, dtype=W.dtype, format="csr") - A.tocsr()
        return L.tocsr(), d
    L = -(r[:, None] * W * r[None, :])
    L[xp.diag_indices(n)] += 1.0
    return L, d
