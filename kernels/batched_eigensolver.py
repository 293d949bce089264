"""Smallest eigenpairs of many graphs at once: block Krylov on a padded (B, N, N) stack.

kernels.eigensolver solves one graph at a time; on a GPU that is a chain of small kernels
and host syncs per image. Here B graphs, padded to a common N, advance together: each step
is one batched operation over the whole stack (xp.matmul on (B, N, b) blocks, a stacked QR,
a stacked eigh of the (B, dim, dim) Rayleigh-Ritz matrices), and the host reads from the
device once per Rayleigh-Ritz step (every image's worst residual at once), not per image.

Per image the method is the per-image "krylov" one (kernels/block_krylov.py): the same
seeded start block (drawn on the host, so CPU and GPU start identically), the same block
size m + 2 and basis cap, the known null vector sqrt(d) deflated exactly, full
reorthogonalisation, thick restarts, and the same acceptance test ||L v - lambda v|| <= tol
for every unit eigenvector. An image is finished at the first Rayleigh-Ritz step where it
passes; its pairs are frozen there and it leaves the stack, so the others do not carry it.
The steps are scheduled as the per-image solver schedules them, from the worst residual of
the images still running.

Padding. Image i has sizes[i] real nodes, rows and columns [0, sizes[i]) of W[i]; the rest is
padding, which must be zero (isolated nodes). It is inert by construction, not by luck:
degrees count only real columns and are 0 on padding rows, so D^-1/2 is 0 there and every
product A X = D^-1/2 W D^-1/2 X is exactly 0 on padding rows; the start block and the
deflated vector are 0 there; each new basis block is masked again after its QR. So every
Krylov vector is exactly 0 on padding, the real part follows the unpadded iteration (to
rounding: a GEMM over a longer, zero-padded axis may sum in another order), and the returned
eigenvectors are exactly 0 on padding rows.

Images that are not solved in the batch (`kernels.eigensolver.smallest_eigenpairs` instead):
  - k == 1, or sizes[i] <= DENSE_MAX_N ("auto" would use dense eigh there), or too few nodes
    for the Krylov basis (sizes[i] <= 10 (k + 1) + 1: the per-image solver shrinks its basis
    there): solved per image from the start;
  - images whose batched result fails the residual check (or is not finite): redone per
    image (its "krylov", which itself falls back to dense), fallback_from "batched_krylov";

The batch is for the GPU, where it turns B chains of small kernels and syncs into one; on a
CPU the per-image solver measured faster (bench/bench_batched_eigensolve.py: 4.2-4.4 against
6.1-6.6 ms per image at N = 504..950 mixed, where the batch pays for padding every graph to
the largest; 3.7 against 4.1 ms at one N), so callers solve image by image there
(pipeline.spectral.spectrum.batch_spectra).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from kernels.backend import array_module, to_numpy
from kernels.block_krylov import _products_to_tol
from kernels.eigensolver import (DENSE_MAX_N, FLOAT32_MIN_TOL, Eigenpairs, _start_block,
                                 smallest_eigenpairs)
from kernels.laplacian import inverse_sqrt_degrees

METHOD = "batched_krylov"

# Block products before an unconverged image is handed to the per-image solver (as "krylov").
MAX_PRODUCTS = 60


@dataclass(frozen=True)
class BatchedEigenpairs:
    """The k smallest eigenpairs of each L_i = I - D_i^-1/2 W_i D_i^-1/2, in W's array module.

    Per image i what kernels.eigensolver.Eigenpairs holds, stacked:
    eigenvalues:   (B, k) float64, ascending, clipped at 0; eigenvalues[:, 0] == 0.
    eigenvectors:  (B, N, k) float64; eigenvectors[i, :sizes[i]] is image i's (n_i, k)
                   Eigenpairs.eigenvectors (generalised eigenvectors x = D^-1/2 v, unit norm,
                   column 0 exactly 1/sqrt(n_i), the others with their largest-|entry|
                   positive); rows sizes[i]: are exactly 0.
    sizes:         (B,) int64 (host), the real node counts.
    methods:       per image, METHOD ("batched_krylov") if the batch solved it, else the
                   method smallest_eigenpairs used ("dense", "krylov").
    max_residuals: (B,) float64 (host), max_j ||L v_j - lambda_j v_j|| over unit v_j.
    fallback_from: per image, METHOD if its batched result failed the check and the
                   per-image solver redid it; else, for images solved per image from the
                   start, that solver's own fallback_from (the iterative method dense eigh
                   replaced, or None).
    """

    eigenvalues: Any
    eigenvectors: Any
    sizes: np.ndarray
    methods: tuple
    max_residuals: np.ndarray
    fallback_from: tuple

    def __len__(self) -> int:
        return len(self.methods)

    def image(self, i: int) -> Eigenpairs:
        """Image i as the per-image solver returns it (eigenvectors cut to its sizes[i] rows)."""
        n = int(self.sizes[i])
        return Eigenpairs(self.eigenvalues[i], self.eigenvectors[i, :n], self.methods[i],
                          float(self.max_residuals[i]), self.fallback_from[i])


def pad_graphs(graphs: list):
    """Graphs (n_i, n_i) of one array module -> (their zero-padded (B, N, N) float32 stack,
    N = max n_i; (B,) int64 node counts): the input smallest_eigenpairs_batched takes."""
    xp = array_module(graphs[0])
    sizes = np.array([W.shape[0] for W in graphs], dtype=np.int64)
    stack = xp.zeros((len(graphs), int(sizes.max()), int(sizes.max())), dtype=xp.float32)
    for i, W in enumerate(graphs):
        stack[i, :W.shape[0], :W.shape[0]] = W
    return stack, sizes


def smallest_eigenpairs_batched(W, k: int, *, sizes=None, tol: float = 1e-5, seed: int = 0,
                                maxiter: Optional[int] = None) -> BatchedEigenpairs:
    """Stack of dense symmetric non-negative W (B, N, N), NumPy or CuPy -> BatchedEigenpairs.

    W:       (B, N, N), float32 (or float64); image i's graph is W[i, :sizes[i], :sizes[i]],
             every other entry of W[i] is padding and must be 0.
    k:       pairs per image, 1 <= k <= min(sizes).
    sizes:   (B,) ints (host or device), each image's node count; None = N for all.
    tol:     accepted residual ||L v - lambda v|| per unit eigenvector (as smallest_eigenpairs;
             below FLOAT32_MIN_TOL the iteration runs in float64).
    seed:    seeds the start blocks (image i starts from the block smallest_eigenpairs would).
    maxiter: block products before the batch gives up on an image (default MAX_PRODUCTS);
             also passed to the per-image solver for the images it redoes.

    Each image's pairs agree with smallest_eigenpairs(W[i, :n_i, :n_i], k) to the tolerance
    (not bitwise: the Rayleigh-Ritz steps fall where the batch schedules them).
    """
    if W.ndim != 3 or W.shape[1] != W.shape[2]:
        raise ValueError(f"W must be a (B, N, N) stack, got shape {W.shape}")
    xp = array_module(W)
    B, N, _ = W.shape
    if B == 0:
        raise ValueError("W holds no graphs")
    sizes_h = np.full(B, N, np.int64) if sizes is None else np.asarray(to_numpy(sizes)).astype(np.int64).ravel()
    if sizes_h.shape != (B,) or not ((sizes_h >= 1) & (sizes_h <= N)).all():
        raise ValueError(f"sizes must be (B,) = ({B},) ints in [1, N={N}], got {sizes_h}")
    if not 1 <= k <= int(sizes_h.min()):
        raise ValueError(f"k must be in [1, min(sizes)={int(sizes_h.min())}], got {k}")

    real = xp.arange(N)[None, :] < xp.asarray(sizes_h)[:, None]  # (B, N) bool
    # One product with two columns: real columns only (the degrees), and every column (a
    # finiteness check over the whole of W, padding included: padding must stay finite for
    # 0 * padding to be 0 in the products below).
    ones = xp.stack([real.astype(W.dtype), xp.ones((B, N), W.dtype)], axis=2)
    sums = xp.matmul(W, ones).astype(xp.float64)
    d = xp.where(real, sums[:, :, 0], 0.0)
    flags = to_numpy(xp.stack([xp.isfinite(sums[:, :, 1]).all(axis=1), (d > 0).any(axis=1)]))
    if not flags[0].all():
        raise ValueError(f"W contains non-finite values (images {np.flatnonzero(~flags[0]).tolist()})")
    if not flags[1].all():
        raise ValueError(f"W has no edges in images {np.flatnonzero(~flags[1]).tolist()}: every "
                         "eigenvector of L = I is an eigenvector")
    r = inverse_sqrt_degrees(d)  # 0 on padding and on isolated nodes
    sqrt_d = xp.sqrt(xp.maximum(d, 0.0))
    v0 = sqrt_d / xp.linalg.norm(sqrt_d, axis=1, keepdims=True)

    m = k - 1
    block = m + 2  # smallest_eigenpairs' block wherever n - 1 > its basis cap
    cap = 10 * block
    in_batch = (m >= 1) & (sizes_h > max(DENSE_MAX_N, cap + 1))

    eigenvalues = xp.zeros((B, k))
    eigenvectors = xp.zeros((B, N, k))
    methods: list = [None] * B
    residuals = np.full(B, np.nan)
    fallback_from: list = [None] * B
    idx = np.flatnonzero(in_batch)
    if idx.size:
        rows = slice(None) if idx.size == B else xp.asarray(idx)
        theta, V, worst = _krylov(W[rows], r[rows], v0[rows], sizes_h[idx], m, block, cap, tol=tol,
                                  seed=seed, max_products=maxiter if maxiter is not None else MAX_PRODUCTS)
        vals, vecs = _assemble(1.0 - theta, V, r[rows], v0[rows], real[rows], sizes_h[idx])
        eigenvalues[rows] = vals
        eigenvectors[rows] = vecs
        for j, i in enumerate(idx):
            residuals[i] = worst[j]
            if worst[j] <= tol:  # False for NaN
                methods[i] = METHOD
            else:
                fallback_from[i] = METHOD
    for i in range(B):
        if methods[i] is not None:
            continue
        n = int(sizes_h[i])
        pairs = smallest_eigenpairs(W[i, :n, :n], k, tol=tol, seed=seed, maxiter=maxiter)
        eigenvalues[i] = pairs.eigenvalues
        eigenvectors[i] = 0.0
        eigenvectors[i, :n] = pairs.eigenvectors
        methods[i], residuals[i] = pairs.method, pairs.max_residual
        if not in_batch[i]:
            fallback_from[i] = pairs.fallback_from
    return BatchedEigenpairs(eigenvalues, eigenvectors, sizes_h, tuple(methods), residuals, tuple(fallback_from))


def _assemble(lam, V, r, v0, real, sizes):
    """eigensolver._assemble on a stack: L's (lambda (S, m), v (S, N, m)) without the null pair
    -> (eigenvalues (S, k), generalised eigenvectors (S, N, k)), exactly 0 on padding rows."""
    xp = array_module(V)
    S = lam.shape[0]
    lam = xp.concatenate([xp.zeros((S, 1)), xp.maximum(lam.astype(xp.float64), 0.0)], axis=1)
    V = xp.concatenate([v0[:, :, None], V.astype(xp.float64)], axis=2)
    # Isolated real nodes map with 1 (their own eigenvector must not vanish), padding with 0.
    x = xp.where(real, xp.where(r > 0, r, 1.0), 0.0)[:, :, None] * V
    x /= xp.linalg.norm(x, axis=1, keepdims=True)
    peak = xp.take_along_axis(x, xp.argmax(xp.abs(x), axis=1)[:, None, :], axis=1)
    x *= xp.where(peak < 0, -1.0, 1.0)
    x[:, :, 0] = xp.where(real, 1.0 / xp.sqrt(xp.asarray(sizes, dtype=xp.float64))[:, None], 0.0)
    return lam, x


# ------------------------------------------------------------------------------ block Krylov

def _krylov(W, r, v0, sizes, m, block, cap, *, tol, seed, max_products):
    """The m largest pairs of each A_i in the complement of v0_i -> (theta (S, m) float64
    descending, V (S, N, m), worst residual per image (S,) float64 on the host)."""
    xp = array_module(W)
    S, N = r.shape
    dtype = np.float32 if tol >= FLOAT32_MIN_TOL else np.float64
    start = np.zeros((S, N, block))
    for j, n in enumerate(sizes.tolist()):  # each image's own block, as smallest_eigenpairs draws it
        start[j, :n] = _start_block(n, block, seed, start, np.float64)
    real = (xp.arange(N)[None, :] < xp.asarray(sizes)[:, None]).astype(dtype)[:, :, None]
    return _largest_block_krylov(W if W.dtype == dtype else W.astype(dtype), r.astype(dtype)[:, :, None],
                                 xp.asarray(start, dtype=dtype), real, v0.astype(dtype)[:, :, None], m,
                                 tol=tol, max_products=max_products, cap=cap)


def _largest_block_krylov(W, r, start, real, deflate, m, *, tol, max_products, cap):
    """kernels.block_krylov.largest_eigenpairs_block_krylov for S operators A_s X = r_s * (W_s @
    (r_s * X)) at once.

    W (S, N, N), r (S, N, 1), start (S, N, b), real (S, N, 1) 0/1 rows of each image,
    deflate (S, N, 1) orthonormal, all in one dtype; cap: basis size (< N_s - 1 for all s).
    Returns theta (S, m) float64 descending, V (S, N, m), and each image's worst residual
    (S,) on the host: from the first Rayleigh-Ritz step where it was <= tol, else the last.
    """
    xp = array_module(start)
    S, N, b = start.shape
    p = deflate.shape[2]
    dtype = start.dtype
    # Column slices of each image's basis are contiguous (as the per-image solver's order="F").
    Qt = xp.zeros((S, p + cap, N), dtype)
    AQt = xp.zeros((S, cap, N), dtype)
    Qt[:, :p, :] = xp.swapaxes(deflate, 1, 2)
    T = xp.zeros((S, cap, cap), xp.float64)
    out_theta = xp.zeros((S, m))
    out_V = xp.zeros((S, N, m), dtype)
    out_worst = np.full(S, np.nan)
    owner = np.arange(S)  # row s of the running stack is image owner[s]
    new = _orthonormalize(start, deflate, real)
    dim, products = 0, 0
    next_check, last = 4, None
    while True:
        Q, AQ = xp.swapaxes(Qt, 1, 2), xp.swapaxes(AQt, 1, 2)
        nb = new.shape[2]
        Q[:, :, p + dim:p + dim + nb] = new
        AQ[:, :, dim:dim + nb] = r * xp.matmul(W, r * new)
        products += 1
        coupling = xp.matmul(xp.swapaxes(Q[:, :, p:p + dim + nb], 1, 2), AQ[:, :, dim:dim + nb])
        coupling = coupling.astype(xp.float64)
        T[:, :dim + nb, dim:dim + nb] = coupling
        T[:, dim:dim + nb, :dim + nb] = xp.swapaxes(coupling, 1, 2)
        dim += nb
        restart = dim + b > cap
        if products >= min(next_check, max_products) or restart:
            theta, Y = _top_ritz(T[:, :dim, :dim], 2 * b)
            Yc = Y.astype(dtype)
            V, AV = xp.matmul(Q[:, :, p:p + dim], Yc), xp.matmul(AQ[:, :, :dim], Yc)
            res = xp.linalg.norm(AV[:, :, :m] - V[:, :, :m] * theta[:, None, :m].astype(dtype), axis=1)
            worst = to_numpy(res.max(axis=1)).astype(np.float64)  # the step's one host sync
            # Finished: converged, broken (NaN: no point iterating), or out of products.
            done = (worst <= tol) | ~np.isfinite(worst) | (products >= max_products)
            if done.any():
                rows = xp.asarray(np.flatnonzero(done))
                out_theta[xp.asarray(owner[done])] = theta[rows, :m]
                out_V[xp.asarray(owner[done])] = V[rows, :, :m]
                out_worst[owner[done]] = worst[done]
                if done.all():
                    return out_theta, out_V, out_worst
                keep_h = np.flatnonzero(~done)
                keep = xp.asarray(keep_h)
                owner, worst = owner[keep_h], worst[keep_h]
                W, r, real, Qt, AQt, T = W[keep], r[keep], real[keep], Qt[keep], AQt[keep], T[keep]
                theta, V, AV = theta[keep], V[keep], AV[keep]
                Q, AQ = xp.swapaxes(Qt, 1, 2), xp.swapaxes(AQt, 1, 2)
            worst_running = float(worst.max())
            next_check = products + _products_to_tol(worst_running, tol, last, products)
            last = (worst_running, products)
            if restart:
                # Thick restart: the 2b Ritz vectors and their images replace the basis, T
                # becomes diagonal, and the next block is the top b's residual directions.
                kept = V.shape[2]
                Q[:, :, p:p + kept], AQ[:, :, :kept] = V, AV
                T[:] = 0.0
                T[:, xp.arange(kept), xp.arange(kept)] = theta
                dim = kept
                new = _orthonormalize(AV[:, :, :b], Q[:, :, :p + dim], real)
                continue
        new = _orthonormalize(AQ[:, :, dim - nb:dim], Q[:, :, :p + dim], real)


def _orthonormalize(Z, B, real):
    """block_krylov._orthonormalize per image: Z (S, N, c) -> orthonormal (S, N, c) spanning
    each Z's part orthogonal to B's orthonormal columns (S, N, q); rows where real is 0 are 0."""
    xp = array_module(Z)
    scale = xp.linalg.norm(Z, axis=1).max(axis=1)
    Bt = xp.swapaxes(B, 1, 2)
    for _ in range(2):  # classical Gram-Schmidt twice
        Z = Z - xp.matmul(B, xp.matmul(Bt, Z))
    Q, R = xp.linalg.qr(Z)
    # A column that lay (almost) in span(B) comes out of QR as amplified rounding noise, not
    # orthogonal to B: project the normalised block once more for those images.
    weak = xp.abs(xp.diagonal(R, axis1=1, axis2=2)).min(axis=1) < 1e-3 * scale
    if _host_reads_are_free(xp):  # redo only the images that need it
        redo = np.flatnonzero(to_numpy(weak))
        if redo.size:
            Q[redo] = xp.linalg.qr(Q[redo] - xp.matmul(B[redo], xp.matmul(Bt[redo], Q[redo])))[0]
    else:  # reading the flags would be a device sync per product: redo all, keep where weak
        again = xp.linalg.qr(Q - xp.matmul(B, xp.matmul(Bt, Q)))[0]
        Q = xp.where(weak[:, None, None], again, Q)
    return Q * real


def _host_reads_are_free(xp) -> bool:
    """True for NumPy; for CuPy a read of device values on the host is a sync."""
    return xp is np


def _top_ritz(T, count):
    """Symmetric T (S, dim, dim) -> each one's `count` largest eigenvalues (descending) and
    vectors. Non-finite entries (a broken image) become 0 so that one image cannot stop the
    stacked eigh; that image's residuals stay NaN and it fails the check."""
    xp = array_module(T)
    theta, Y = xp.linalg.eigh(xp.where(xp.isfinite(T), T, 0.0))
    return theta[:, ::-1][:, :count], Y[:, :, ::-1][:, :, :count]
