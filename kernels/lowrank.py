"""Low-rank graphs W = F Fᵀ + s·11ᵀ and their exact Laplacian eigenpairs, never N × N.

F holds the (upsampled) unit-norm patch features (N, C) and s = max(0, -min F Fᵀ) shifts every
cosine to be non-negative: the paper's max(F Fᵀ, 0) keeps negative cosines at 0, this graph
keeps their order, and is of rank r = C + 1 whatever N is. With G = [F, √s·1] (N, r):

    degrees  d = G (Gᵀ 1)                        O(N r)
    A = D^-½ W D^-½ = U Uᵀ,  U = D^-½ G
    L = I - A:  eigenvalues 1 - σ², eigenvectors the left singular vectors of U

so the k smallest eigenpairs of L come from the r × r Gram matrix UᵀU (one GEMM) and its
eigh: O(N r²) time, O(N r) memory, exact up to rounding (no iterations, no start vectors). At
N = 50,000 and C = 384 that is a 50,000 × 385 GEMM, against a 10 GB dense W. The shift needs min F Fᵀ, taken in
row blocks (O(N² C) flops, O(block · N) memory): on a GPU a fraction of a second at N = 50,000.
NumPy or CuPy, from the input.
"""
from __future__ import annotations

from dataclasses import dataclass

from kernels.backend import array_module

BLOCK_SCORES = 1 << 24  # entries of F Fᵀ held at once by min_cosine (64 MB in float32)


@dataclass(frozen=True)
class LowRankGraph:
    """W = factors @ factors.T + shift (every entry), for the eigensolver and the cuts."""

    factors: object  # (N, C) NumPy or CuPy
    shift: float

    @property
    def shape(self) -> tuple[int, int]:
        n = self.factors.shape[0]
        return n, n

    def degrees(self):
        """(N,) row sums of W, float64."""
        xp = array_module(self.factors)
        f = self.factors.astype(xp.float64)
        return f @ f.sum(axis=0) + self.shift * f.shape[0]

    def toarray(self):
        """The dense (N, N) W (for tests and small N)."""
        return self.factors @ self.factors.T + self.shift


def min_cosine(f) -> float:
    """(N, C) rows -> min over all pairs of f_i · f_j, in row blocks of BLOCK_SCORES entries."""
    n = f.shape[0]
    rows = max(1, BLOCK_SCORES // max(n, 1))
    return min(float((f[i:i + rows] @ f.T).min()) for i in range(0, n, rows))


def lowrank_graph(f) -> LowRankGraph:
    """(N, C) unit-norm features -> the shifted cosine graph F Fᵀ + max(0, -min F Fᵀ)."""
    return LowRankGraph(factors=f, shift=max(0.0, -min_cosine(f)))


def subgraph(W, index):
    """The graph on nodes `index` of a dense, sparse or low-rank W (what cuts recurse on)."""
    if isinstance(W, LowRankGraph):
        return LowRankGraph(W.factors[index], W.shift)
    return W[index][:, index]


def lowrank_eigenpairs(W: LowRankGraph, k: int):
    """The k smallest eigenpairs of L = I - D^-½ W D^-½ -> (eigenvalues (k,) ascending,
    unit vectors v (N, k) of L, residuals (k,)), float64, in W's array module. Needs
    k <= rank + 1 (the rest of L's spectrum is 1, the null space of W)."""
    xp = array_module(W.factors)
    f = W.factors.astype(xp.float64)
    n, c = f.shape
    if k > c + 1:
        raise ValueError(f"a rank-{c + 1} graph has {c + 1} eigenvalues below 1: k={k} asks for more")
    d = W.degrees()
    if not bool((d > 0).all()):
        raise ValueError("a low-rank graph with a non-positive degree (the shift must make W non-negative)")
    G = xp.concatenate([f, xp.full((n, 1), W.shift ** 0.5)], axis=1) if W.shift > 0 else f
    U = G / xp.sqrt(d)[:, None]
    # A's eigenpairs from the r x r Gram matrix UᵀU = R diag(σ²) Rᵀ: its top eigenvectors R
    # give A's as U R / σ. One GEMM instead of a QR (measured 20x slower here); squaring costs
    # accuracy only for small σ, and the pairs sought have σ² near 1 (A's top).
    sigma2, right = xp.linalg.eigh(U.T @ U)
    top = xp.argsort(-sigma2)[:k]
    sigma2, right = xp.clip(sigma2[top], 1e-300, None), right[:, top]
    V = (U @ right) / xp.sqrt(sigma2)[None, :]
    V /= xp.linalg.norm(V, axis=0, keepdims=True)
    lam = xp.clip(1.0 - sigma2, 0.0, None)
    residual = xp.linalg.norm(V - U @ (U.T @ V) - V * lam[None, :], axis=0)
    return lam, V, residual
