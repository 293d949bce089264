"""One image's spectral decomposition: features -> graph -> oriented Laplacian eigenvectors."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels import smallest_eigenpairs
from kernels.backend import array_module, is_sparse, to_numpy
from kernels.batched_eigensolver import pad_graphs, smallest_eigenpairs_batched
from kernels.lowrank import LowRankGraph
from pipeline.spectral.affinity import image_affinity
from pipeline.config import EigenConfig, ExtractConfig


@dataclass(frozen=True)
class Spectrum:
    eigenvalues: np.ndarray  # (k,) ascending, eigenvalues of L = D^-½ (D − W) D^-½
    eigenvectors: np.ndarray  # (k, h, w) generalized eigenvectors, unit norm, oriented
    method: str  # the eigensolver that produced them
    max_residual: float


def border_mask(h: int, w: int) -> np.ndarray:
    """(h, w) bool, True on the outermost ring of the grid."""
    mask = np.zeros((h, w), dtype=bool)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    return mask


def orient_by_border(eigenvectors: np.ndarray) -> np.ndarray:
    """Flip eigenvectors 1..k-1 of (k, h, w) so that their positive side touches the border less.

    Objects rarely fill the frame, so "positive = foreground" becomes a deterministic rule
    (docs/extract.md); the minority-side rule measured wrong on about a quarter of the images
    whose object is large. Ties go to the side whose border entries sum to less, then to a positive maximum
    |entry|, so the output never depends on the eigensolver's arbitrary sign. Index 0, the
    constant vector, stays positive.
    """
    out = eigenvectors.copy()
    border = border_mask(*eigenvectors.shape[1:])
    for vec in out[1:]:
        edge = vec[border]
        key = (np.sum(edge > 0) - np.sum(edge < 0), float(edge.sum()))
        if key == (0, 0.0):
            key = (0, -float(vec.flat[np.argmax(np.abs(vec))]))
        if key > (0, 0.0):
            vec *= -1
    return out


def grid_stack(eigenvectors, grid_hw, shape: tuple[int, int] | None = None):
    """(B, N, k) eigenvectors of B images (image i's first h_i·w_i rows are its (h_i, w_i) grid
    in row-major order, the rest padding, as kernels.batched_eigensolver returns them) and
    grid_hw (B, 2) -> ((B, k, H, W) grids, (B, H, W) bool valid cells), each image's grid in
    the top-left corner of an H x W canvas (shape, default the largest h_i and w_i), 0 outside.
    Array-module generic (NumPy or CuPy, from `eigenvectors`)."""
    xp = array_module(eigenvectors)
    hw = np.asarray(to_numpy(grid_hw), dtype=np.int64).reshape(-1, 2)
    B, N, k = eigenvectors.shape
    if hw.shape[0] != B or (hw < 1).any() or (hw.prod(axis=1) > N).any():
        raise ValueError(f"grid_hw must be (B, 2) = ({B}, 2) positive with h·w <= N = {N}, got {hw.tolist()}")
    H, W = (int(v) for v in (shape if shape is not None else hw.max(axis=0)))
    if (hw[:, 0] > H).any() or (hw[:, 1] > W).any():
        raise ValueError(f"grids {hw.tolist()} do not fit a {H} x {W} canvas")
    ys, xs = xp.arange(H)[None, :, None], xp.arange(W)[None, None, :]
    h, w = xp.asarray(hw[:, 0])[:, None, None], xp.asarray(hw[:, 1])[:, None, None]
    valid = (ys < h) & (xs < w)
    flat = xp.where(valid, ys * w + xs, 0).reshape(B, H * W)
    cells = eigenvectors[xp.arange(B)[:, None], flat]  # (B, H·W, k)
    cells = xp.where(valid.reshape(B, H * W, 1), cells, 0.0)
    return xp.ascontiguousarray(xp.swapaxes(cells, 1, 2)).reshape(B, k, H, W), valid


def orient_by_border_batched(eigenvectors, valid):
    """orient_by_border on a stack: (B, k, H, W) eigenvectors of B images, (B, H, W) bool valid
    cells (each image's grid; grid_stack makes both) -> the stack with vectors 1..k-1 flipped
    as orient_by_border flips each image's (k, h_i, w_i) grid. Array-module generic, no loop
    over images or vectors.

    An image's border is its valid cells with a 4-neighbour outside its grid (for a grid in
    one rectangle, border_mask of that rectangle); cells outside the grid must be 0. The
    signs are orient_by_border's, tie rules included, with one caveat: the border sum is
    reduced in another order than NumPy's, so when it lies within rounding of 0 its sign may
    differ (exact ties, e.g. an all-zero border, are ties in both).
    """
    xp = array_module(eigenvectors)
    B, k = eigenvectors.shape[:2]
    inside = xp.pad(valid, ((0, 0), (1, 1), (1, 1)), mode="constant", constant_values=False)
    interior = inside[:, :-2, 1:-1] & inside[:, 2:, 1:-1] & inside[:, 1:-1, :-2] & inside[:, 1:-1, 2:]
    border = (valid & ~interior)[:, None]
    edge = xp.where(border, eigenvectors, 0.0)
    count = (edge > 0).sum(axis=(2, 3)) - (edge < 0).sum(axis=(2, 3))
    total = edge.sum(axis=(2, 3))
    flat = xp.where(valid[:, None], eigenvectors, 0.0).reshape(B, k, -1)
    peak = xp.take_along_axis(flat, xp.argmax(xp.abs(flat), axis=2)[:, :, None], axis=2)[:, :, 0]
    # orient_by_border's key (count, sum), or (0, -peak) when both are 0, flipped if > (0, 0).
    flip = (count > 0) | ((count == 0) & ((total > 0) | ((total == 0) & (peak < 0))))
    flip[:, 0] = False
    return eigenvectors * xp.where(flip, -1.0, 1.0).astype(eigenvectors.dtype)[:, :, None, None]


def image_spectrum(features, image: np.ndarray, cfg: ExtractConfig) -> Spectrum:
    """(h, w, C) backbone features (NumPy or CuPy) and the (H, W, 3) image -> its Spectrum
    on the (h·u, w·u) grid, u = cfg.graph.upsample."""
    return graph_spectrum(image_affinity(features, image, cfg.graph), grid_size(features, cfg), cfg.eigen)


def grid_size(features, cfg: ExtractConfig) -> tuple[int, int]:
    """The eigenvectors' (h, w) for (h0, w0, C) backbone features: the feature grid upsampled."""
    return features.shape[0] * cfg.graph.upsample, features.shape[1] * cfg.graph.upsample


def graph_spectrum(W, grid_hw: tuple[int, int], cfg: EigenConfig) -> Spectrum:
    """(N, N) affinity of an (h, w) grid, N = h·w -> its Spectrum; k is capped at N."""
    h, w = grid_hw
    pairs = smallest_eigenpairs(W, min(cfg.k, h * w), method=cfg.method)
    vectors = to_numpy(pairs.eigenvectors).T.reshape(-1, h, w)
    return Spectrum(
        eigenvalues=to_numpy(pairs.eigenvalues).astype(np.float64),
        eigenvectors=orient_by_border(vectors),
        method=pairs.method,
        max_residual=float(pairs.max_residual),
    )


def batch_spectra(graphs: list, grids: list[tuple[int, int]], cfg: EigenConfig,
                  batched: bool = False) -> list[Spectrum | Exception]:
    """One batch's graphs ((N_i, N_i), NumPy or CuPy) on their (h_i, w_i) grids -> each one's
    Spectrum, or the exception that its solve raised (one bad graph never costs the others).

    batched: dense graphs of one array module are solved as one zero-padded stack
    (kernels.batched_eigensolver, method "auto" only), oriented on the device
    (orient_by_border_batched) and copied to the host once; graphs it cannot take (sparse,
    low-rank, fewer than k nodes) and a stack that fails as a whole are solved one by one."""
    out: list[Spectrum | Exception | None] = [None] * len(graphs)
    stack = [i for i, W in enumerate(graphs) if batched and cfg.method == "auto" and is_dense(W)
             and W.shape[0] >= cfg.k] if len(graphs) > 1 else []
    if len(stack) > 1:
        try:
            for i, spectrum in zip(stack, stacked_spectra(*pad_graphs([graphs[i] for i in stack]),
                                                          [grids[i] for i in stack], cfg)):
                out[i] = spectrum
        except Exception:  # e.g. one graph without edges: each image alone, each its own error
            pass
    for i, (W, hw) in enumerate(zip(graphs, grids)):
        if out[i] is None:
            try:
                out[i] = graph_spectrum(W, hw, cfg)
            except Exception as exc:
                out[i] = exc
    return out  # type: ignore[return-value]


def is_dense(W) -> bool:
    """A dense (N, N) array graph: what the batched solver stacks (not sparse, not low-rank)."""
    return not is_sparse(W) and not isinstance(W, LowRankGraph)


def stacked_spectra(stack, sizes, grids: list[tuple[int, int]], cfg: EigenConfig) -> list[Spectrum]:
    """A zero-padded (B, N, N) stack of graphs (image i's is stack[i, :sizes[i], :sizes[i]]) on
    their (h_i, w_i) grids -> their Spectra, solved together (kernels.batched_eigensolver),
    oriented on the device and copied to the host once. Raises when the stack cannot be solved
    as a whole (e.g. a graph without edges): callers solve its images one by one then."""
    pairs = smallest_eigenpairs_batched(stack, cfg.k, sizes=np.asarray(sizes))
    vectors, valid = grid_stack(pairs.eigenvectors, grids)
    vectors = to_numpy(orient_by_border_batched(vectors, valid))  # the batch's one copy to the host
    values = to_numpy(pairs.eigenvalues)
    return [Spectrum(eigenvalues=values[i].astype(np.float64), eigenvectors=vectors[i, :, :h, :w].copy(),
                     method=pairs.methods[i], max_residual=float(pairs.max_residuals[i]))
            for i, (h, w) in enumerate(grids)]


def device_array(features, xp):
    """(h, w, C) float32 features, a torch tensor (Backbone.forward_prepared) or an array ->
    an array of `xp`. A CUDA tensor reaches CuPy through DLPack, without a copy; a CPU tensor
    becomes a NumPy view of the same memory."""
    if isinstance(features, xp.ndarray):
        return features
    if xp is np:
        return features.detach().cpu().numpy() if hasattr(features, "detach") else np.asarray(features)
    return xp.from_dlpack(features.detach() if hasattr(features, "detach") else features)
