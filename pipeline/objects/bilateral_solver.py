"""The fast bilateral solver (Barron and Poole, ECCV 2016), as TokenCut refines its masks.

Pixels are splatted onto a coarse bilateral grid (x / σ_xy, y / σ_xy, luma / σ_l, two chroma
channels / σ_c); on the grid's occupied vertices the solver minimises

    λ · Σ_ij Â_ij (y_i − y_j)²  +  Σ_i c_i (y_i − t_i)²

with Â the bistochastised grid blur, so a target t (the upsampled patch mask) is smoothed
along edges of the image while staying close to t where the confidence c is high. The linear
system (λ (D_m − D_n B D_n) + diag(S c)) y = S (c t) is solved by Jacobi-preconditioned
conjugate gradients (scipy), and y is sliced back to the pixels.

TokenCut's parameters are the defaults: σ_xy 16, σ_l 16, σ_c 8, λ 128, 25 CG iterations.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import cg

# ITU-R BT.601 full-range RGB -> YUV (as Barron and Poole's reference code), offset to [0, 255].
RGB_TO_YUV = np.array([[0.299, 0.587, 0.114],
                       [-0.168736, -0.331264, 0.5],
                       [0.5, -0.418688, -0.081312]])
YUV_OFFSET = np.array([0.0, 128.0, 128.0])


@dataclass(frozen=True)
class BilateralGrid:
    splat_matrix: sparse.csr_matrix  # (V, P): pixel p -> its grid vertex
    blurs: tuple  # one (V, V) sparse neighbour matrix per grid dimension (±1 vertex)
    n_pixels: int
    n_vertices: int

    def splat(self, x: np.ndarray) -> np.ndarray:
        """(P, ...) per-pixel values -> (V, ...) their sums per vertex."""
        return self.splat_matrix @ x

    def slice(self, y: np.ndarray) -> np.ndarray:
        """(V, ...) per-vertex values -> (P, ...) each pixel's vertex value."""
        return self.splat_matrix.T @ y

    def blur(self, y):
        """(V, ...) array or (V, V) sparse -> the [1 2 1] blur along every grid dimension."""
        out = 2 * len(self.blurs) * y
        for b in self.blurs:
            out = out + b @ y
        return out


def rgb_to_yuv(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB in [0, 255] -> (H, W, 3) YUV with U and V offset to [0, 255]."""
    return image.astype(np.float64) @ RGB_TO_YUV.T + YUV_OFFSET


def bilateral_grid(image: np.ndarray, sigma_spatial: float = 16, sigma_luma: float = 16,
                   sigma_chroma: float = 8) -> BilateralGrid:
    """(H, W, 3) uint8 RGB image -> its bilateral grid (only occupied vertices are kept)."""
    h, w = image.shape[:2]
    yuv = rgb_to_yuv(image)
    iy, ix = np.mgrid[:h, :w]
    coords = np.stack([ix / sigma_spatial, iy / sigma_spatial, yuv[..., 0] / sigma_luma,
                       yuv[..., 1] / sigma_chroma, yuv[..., 2] / sigma_chroma], axis=-1)
    coords = coords.astype(np.int64).reshape(-1, 5)
    # Mixed-radix hash with one spare value on each side, so a ±1 neighbour never aliases.
    radix = coords.max(axis=0) + 3
    place = np.concatenate([[1], np.cumprod(radix[:-1])])
    hashes = (coords + 1) @ place
    unique, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    n_pixels, n_vertices = len(hashes), len(unique)
    splat_matrix = sparse.csr_matrix((np.ones(n_pixels), (inverse.ravel(), np.arange(n_pixels))),
                                     shape=(n_vertices, n_pixels))
    blurs = []
    for d in range(coords.shape[1]):
        blur = sparse.csr_matrix((n_vertices, n_vertices))
        for offset in (-1, 1):
            neighbour = hashes[first] + offset * place[d]
            at = np.clip(np.searchsorted(unique, neighbour), 0, n_vertices - 1)
            found = np.flatnonzero(unique[at] == neighbour)
            blur = blur + sparse.csr_matrix((np.ones(len(found)), (found, at[found])),
                                            shape=(n_vertices, n_vertices))
        blurs.append(blur)
    return BilateralGrid(splat_matrix, tuple(blurs), n_pixels, n_vertices)


def bistochastize(grid: BilateralGrid, iterations: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """-> (n, m), each (V,): vertex scales making diag(n) B diag(n) have row sums m = the
    pixel counts per vertex (the solver's normalisation)."""
    m = grid.splat(np.ones(grid.n_pixels))
    n = np.ones(grid.n_vertices)
    for _ in range(iterations):
        n = np.sqrt(n * m / grid.blur(n))
    return n, n * grid.blur(n)


def bilateral_solve(image: np.ndarray, target: np.ndarray, confidence: np.ndarray | None = None,
                    sigma_spatial: float = 16, sigma_luma: float = 16, sigma_chroma: float = 8,
                    lam: float = 128.0, maxiter: int = 25, tol: float = 1e-5,
                    diag_min: float = 1e-5) -> np.ndarray:
    """(H, W, 3) uint8 image, (H, W) or (H, W, L) float target, optional confidence of the
    target's shape (default 0.999 everywhere, as TokenCut) -> the solved map, float64, shaped
    like target (a stack shares the grid and the system matrix)."""
    if target.shape[:2] != image.shape[:2]:
        raise ValueError(f"target {target.shape[:2]} and image {image.shape[:2]} differ in size")
    stacked = target.ndim == 3
    t = target.reshape(target.shape[0] * target.shape[1], -1).astype(np.float64)
    c = (np.full_like(t, 0.999) if confidence is None
         else np.asarray(confidence, np.float64).reshape(t.shape))
    grid = bilateral_grid(image, sigma_spatial, sigma_luma, sigma_chroma)
    n, m = bistochastize(grid)
    dn = sparse.diags(n)
    smooth = sparse.diags(m) - dn @ grid.blur(dn)
    c_splat = grid.splat(c)
    b = grid.splat(c * t)
    preconditioner = sparse.diags(1.0 / np.maximum(diag_min, m))
    y = np.empty_like(b)
    for j in range(t.shape[1]):
        A = lam * smooth + sparse.diags(c_splat[:, j])
        y0 = b[:, j] / np.maximum(c_splat[:, j], 1e-12)
        y[:, j], _ = cg(A, b[:, j], x0=y0, M=preconditioner, maxiter=maxiter, rtol=tol)
    out = grid.slice(y).reshape(target.shape[0], target.shape[1], -1)
    return out if stacked else out[..., 0]
