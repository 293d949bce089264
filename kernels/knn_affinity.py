"""KNN colour affinity (KNN matting, Chen et al. 2013), array-module generic.

The same graph as pymatting's `knn_laplacian` affinity, used by the Deep Spectral Methods
reference: each pixel links to its nearest neighbours in (r, g, b, w·x, w·y) space, once per
(neighbour count, spatial weight) pair, and the 0/1 graph is symmetrised.
"""
from __future__ import annotations

from kernels.backend import array_module, is_cupy, scipy_module
from kernels.topk_affinity import block_rows

# Above this many points a NumPy input is searched with a k-d tree: brute force is O(N^2)
# (about 40 s for the 100,000 pixels of a 400 px image here), the tree O(N log N) in 5-D.
TREE_MIN_POINTS = 20_000


def nearest_neighbors(points, k: int, chunk: int | None = None):
    """Indices (N, k) of each point's k nearest points (itself included), nearest first.

    Brute force (NumPy or CuPy alike) on up to TREE_MIN_POINTS points or on CuPy; `chunk`
    rows at a time bound its memory to chunk × N (default: kernels.topk_affinity's block
    budget, so large grids stay O(N·k)). Larger NumPy inputs use SciPy's cKDTree (exact; only
    the order among equidistant neighbours may differ from brute force).
    """
    if not is_cupy(points) and points.shape[0] > TREE_MIN_POINTS:
        return tree_nearest_neighbors(points, k)
    return brute_nearest_neighbors(points, k, chunk)


def tree_nearest_neighbors(points, k: int):
    """NumPy (N, d) -> (N, k) indices of the k nearest points by an exact k-d tree query."""
    from scipy.spatial import cKDTree

    k = min(k, points.shape[0])
    _, neighbors = cKDTree(points).query(points, k=k)
    return neighbors.reshape(points.shape[0], k)


def brute_nearest_neighbors(points, k: int, chunk: int | None = None):
    """(N, d) -> (N, k) indices of the k nearest points by blocked brute force (any array module)."""
    xp = array_module(points)
    k = min(k, points.shape[0])
    chunk = chunk or block_rows(points.shape[0])
    squared = (points * points).sum(axis=1)
    out = []
    for start in range(0, points.shape[0], chunk):
        block = points[start : start + chunk]
        dist = squared[start : start + chunk, None] + squared[None, :] - 2.0 * (block @ points.T)
        part = xp.argpartition(dist, k - 1, axis=1)[:, :k]
        # argpartition leaves the k nearest unordered; order them so ties resolve the same way.
        order = xp.argsort(xp.take_along_axis(dist, part, axis=1), axis=1, kind="stable")
        out.append(xp.take_along_axis(part, order, axis=1))
    return xp.concatenate(out, axis=0)


def knn_colour_affinity(image, n_neighbors=(20, 10), spatial_weights=(2.0, 0.1)):
    """(h, w, 3) float image in [0, 1] -> sparse CSR affinity (h·w, h·w), entries in {0..4}.

    Entries count how often i and j picked each other (both directions, both passes), exactly
    as the reference builds it (its COO duplicates are summed).
    """
    xp = array_module(image)
    sparse = scipy_module(image).sparse
    h, w = image.shape[:2]
    n = h * w
    colour = image.reshape(n, 3).astype(xp.float32)
    x = xp.tile(xp.linspace(0, 1, w, dtype=xp.float32), h)
    y = xp.repeat(xp.linspace(0, 1, h, dtype=xp.float32), w)
    rows, cols = [], []
    for k, weight in zip(n_neighbors, spatial_weights):
        points = xp.concatenate([colour, weight * x[:, None], weight * y[:, None]], axis=1)
        neighbors = nearest_neighbors(points, k)
        rows.append(xp.repeat(xp.arange(n), neighbors.shape[1]))
        cols.append(neighbors.ravel())
    i = xp.concatenate(rows + cols)
    j = xp.concatenate(cols + rows)
    data = xp.ones(i.shape[0], dtype=xp.float64)
    return sparse.coo_matrix((data, (i, j)), shape=(n, n)).tocsr()
