"""Block Krylov (block Lanczos) for the largest eigenpairs of a symmetric operator.

Array-module generic (NumPy or CuPy, from the start block), and BLAS-3 throughout: the
operator is applied to whole blocks, so one product costs one GEMM with the matrix.
"""
from __future__ import annotations

import numpy as np

from kernels.backend import array_module


def residual_norms(AV, V, theta):
    """||A v_j - theta_j v_j|| per column (N, m) -> (m,) float64."""
    xp = array_module(V)
    return xp.linalg.norm(AV - V * theta[None, :].astype(V.dtype), axis=0).astype(xp.float64)


def _qr(Z):
    """Thin QR (N, b) -> Q (N, b), R (b, b), from the array module's own linalg.

    Not scipy.linalg.qr, although it is ~2x faster alone: SciPy and NumPy wheels each bundle
    their own OpenBLAS, and alternating calls between the two thread pools (spinning threads
    competing for 2 cores) made the whole loop ~4x slower here.
    """
    return array_module(Z).linalg.qr(Z)


def _orthonormalize(Z, B):
    """Z (N, b) -> orthonormal (N, b) spanning Z's part orthogonal to B's orthonormal columns."""
    xp = array_module(Z)
    scale = float(xp.linalg.norm(Z, axis=0).max())
    for _ in range(2):  # classical Gram-Schmidt twice: BLAS-3 and orthogonal to rounding
        Z = Z - B @ (B.T @ Z)
    Q, R = _qr(Z)
    # A column of Z that lay (almost) in span(B) comes out of QR as amplified rounding noise,
    # not orthogonal to B; project the normalised block once more in that case.
    if float(xp.abs(xp.diagonal(R)).min()) < 1e-3 * scale:
        Q, _ = _qr(Q - B @ (B.T @ Q))
    return Q


def largest_eigenpairs_block_krylov(apply, start, m, *, deflate, tol, measure=None,
                                    max_products=60, max_dim=None):
    """Largest m eigenpairs of a symmetric operator on the complement of `deflate`.

    apply:   X (N, b) -> A X (N, b); A symmetric, in the dtype of `start`.
    start:   (N, b) start block, b >= m (see _krylov).
    deflate: (N, p) orthonormal columns excluded from the search (known eigenvectors).
    tol:     converged when every residual <= tol.
    measure: optional (V (N, m), theta (m,)) -> (m,) residuals to test instead of
             ||A v - theta v|| (for an A that only stands in for the problem, as in
             shift-invert).
    Returns theta (m,) descending (float64), V (N, m) orthonormal, and the residuals: by
    default ||A v - theta v||, computed explicitly from stored products (no extra apply).

    Block Lanczos with full reorthogonalisation: the basis Q and A Q are kept, T = Q^T A Q
    grows by one block column per product, and Rayleigh-Ritz on T gives the pairs. When the
    basis would exceed max_dim, it restarts from the best Ritz vectors (whose images are
    already known) extended by their residual directions.
    """
    xp = array_module(start)
    n, b = start.shape
    p = deflate.shape[1]
    room = n - p
    cap = min(max(max_dim or 10 * b, 3 * b), room)  # a thick restart keeps 2b, adds b
    # Column-major, and `deflate` stored in front: every basis Q[:, :p + dim] is a contiguous
    # view, so reorthogonalisation copies nothing.
    Q = xp.empty((n, p + cap), dtype=start.dtype, order="F")
    Q[:, :p] = deflate
    AQ = xp.empty((n, cap), dtype=start.dtype, order="F")
    T = xp.zeros((cap, cap), dtype=xp.float64)
    new = _orthonormalize(start, deflate)
    dim, products = 0, 0
    # Rayleigh-Ritz costs an eigh of T plus two GEMMs, so it runs only where convergence is
    # plausible: from a basis of 4 blocks on, then as often as the observed rate suggests.
    next_check, last = 4, None
    while True:
        nb = new.shape[1]
        Q[:, p + dim:p + dim + nb] = new
        AQ[:, dim:dim + nb] = apply(new)
        products += 1
        coupling = (Q[:, p:p + dim + nb].T @ AQ[:, dim:dim + nb]).astype(xp.float64)
        T[:dim + nb, dim:dim + nb] = coupling
        T[dim:dim + nb, :dim + nb] = coupling.T
        dim += nb
        # A full next block must fit; when the space itself is smaller (cap == room) the
        # last block is cut instead and Rayleigh-Ritz on the whole space is exact.
        restart = dim + b > cap and cap < room
        if products >= min(next_check, max_products) or dim >= room or restart:
            # 2b Ritz pairs: the top m are the answer, all 2b survive a thick restart.
            theta, Y = _top_ritz(T[:dim, :dim], min(dim, 2 * b))
            Yc = Y.astype(Q.dtype)
            V, AV = Q[:, p:p + dim] @ Yc, AQ[:, :dim] @ Yc
            if measure is None:
                res = residual_norms(AV[:, :m], V[:, :m], theta[:m])
            else:
                res = measure(V[:, :m], theta[:m])
            worst = float(res.max())
            if worst <= tol or products >= max_products or dim >= room:
                return theta[:m], V[:, :m], res
            next_check = products + _products_to_tol(worst, tol, last, products)
            last = (worst, products)
            if restart:
                # Thick restart: the 2b Ritz vectors and their images replace the basis, T
                # becomes diagonal, and the next block is the top b's residual directions.
                keep = V.shape[1]
                Q[:, p:p + keep], AQ[:, :keep] = V, AV
                T[:] = 0.0
                T[xp.arange(keep), xp.arange(keep)] = theta
                dim = keep
                new = _orthonormalize(AV[:, :b], Q[:, :p + dim])
                continue
        new = _orthonormalize(AQ[:, dim - nb:dim], Q[:, :p + dim])
        new = new[:, :cap - dim]


def _products_to_tol(worst, tol, last, products):
    """Products until the next Rayleigh-Ritz: 1 or 2, from the geometric rate seen so far.

    At most 2 because Krylov convergence speeds up as it goes (a rate measured early
    predicts too many products), and a product costs several Rayleigh-Ritz steps.
    """
    if last is None or not 0 < worst < last[0] or not tol > 0:
        return 1
    rate = (worst / last[0]) ** (1.0 / (products - last[1]))
    return 2 if np.log(tol / worst) / np.log(rate) >= 2 else 1


def _top_ritz(T, count):
    """Symmetric T (dim, dim) -> its `count` largest eigenvalues (descending) and vectors."""
    xp = array_module(T)
    theta, Y = xp.linalg.eigh(T)
    return theta[::-1][:count], Y[:, ::-1][:, :count]
