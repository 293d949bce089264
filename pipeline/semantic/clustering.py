"""Dataset-wide k-means over segment features, in bounded memory.

    fit_clusters(batches, cfg)   a re-iterable of (n, D) feature batches -> SegmentClusters
    SegmentClusters.assign(x)    (n, D) -> (n,) cluster ids 0..C-1
    SegmentClusters.distances(x) (n, D) -> (n, C) squared distances to the centroids

The features are L2-normalised. One pass draws a seeded bottom-k sample (at most
cfg.sample_size vectors, pipeline.semantic.keyed_sample) and counts the input; PCA (optional,
whitened if asked) and k-means with n_init restarts are fitted on the sample, sorted by key.
When the sample is the whole input that is exact k-means; otherwise Lloyd iterations then
refine the centroids over the full stream, one pass each, holding only C x D sums. Memory is
the sample plus one batch, whatever the dataset size.

A batch is (Keys, (n, D) features): each vector named by its image and its index there (a
segment, a region's label). The same seed and the same keyed vectors give the same clusters
whatever order or batches the stream cuts them into (shards of two extractions, one per image or
a thousand) and whatever the caller's thread settings: the sample is chosen and ordered by key,
every product that assigns or projects a vector is computed row by row (rowwise), and the Lloyd
sums are exact (fixed point). A plain (n, D) array is keyed by its position in the stream: its
order is then the caller's to fix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits

from pipeline.config import check
from pipeline.semantic.keyed_sample import Keys, KeyedSample, position_keys

# scikit-learn's KMeans sums each OpenMP thread's chunks, and BLAS splits the PCA's and the
# distances' products across its threads, so centroids depend on both thread counts in their low
# bits, and k-means carries those bits to another optimum: VOC07's seed 2 gave labels of 20.4
# mIoU with 1 OpenMP thread and 22.9 with 2, the same shards; with the OpenMP count fixed, one
# BLAS thread (an in-process evaluation after its extraction actor set the process's pools to
# its share of the cores) against two still left 79 of 1,675 label maps equal (docs/semantic.md).
# A fixed count for every pool gives a seed the same clusters on any thread count, Ray worker or
# in-process run; 2 is what the documented figures ran with.
CLUSTERING_THREADS = 2


def clustering_threads():
    """The context every dataset-wide fit runs in: CLUSTERING_THREADS threads in every thread
    pool (OpenMP and BLAS)."""
    return threadpool_limits(limits=CLUSTERING_THREADS)


class TooFewToCluster(ValueError):
    """Fewer feature vectors than clusters."""


@dataclass(frozen=True)
class ClusterConfig:
    n_clusters: int = 20  # foreground clusters; per-image background segments are label 0
    seed: int = 0
    # PCA to pca_dim dimensions (0 = none), each direction scaled to unit variance if whiten
    # (needs pca_dim). Segment features share a few dominant directions that plain k-means
    # spends its clusters on: whitened PCA 64 raised VOC07 mIoU 8.0 -> 13.9 and COCO128 11.5 ->
    # 13.9, on tune and check parts alike (docs/semantic.md); pca_dim=0, whiten=False is the
    # paper's plain k-means.
    pca_dim: int = 64
    whiten: bool = True
    sample_size: int = 100_000
    n_init: int = 10
    max_passes: int = 10  # Lloyd passes over the full stream when it exceeds the sample
    tol: float = 1e-5  # stop when no centroid moves more than this (squared distance)

    def __post_init__(self):
        where = "pseudo_labels.cluster"
        check(self.n_clusters >= 1, f"{where}.n_clusters", ">= 1", self.n_clusters)
        check(self.pca_dim >= 0, f"{where}.pca_dim", ">= 0 (0: no PCA)", self.pca_dim)
        check(self.sample_size >= 1 and self.n_init >= 1, f"{where}.sample_size / n_init", ">= 1",
              (self.sample_size, self.n_init))
        if not self.pca_dim and self.whiten:  # no PCA, nothing to whiten: recorded as off
            object.__setattr__(self, "whiten", False)


@dataclass
class SegmentClusters:
    centroids: np.ndarray  # (C, d) in the (PCA-reduced) space
    pca_mean: np.ndarray | None  # (D,)
    pca_components: np.ndarray | None  # (d, D), rows scaled by 1/sqrt(variance) when whitened
    n_fitted: int  # segments seen
    n_passes: int  # full-stream Lloyd passes after the sample fit

    def transform(self, features: np.ndarray) -> np.ndarray:
        """(n, D) raw features -> (n, d) normalised, PCA-reduced (row by row: a vector's
        projection does not depend on the batch it came in)."""
        x = l2_normalize(features)
        if self.pca_components is not None:
            x = rowwise(x - self.pca_mean, self.pca_components.T)
        return x

    def assign(self, features: np.ndarray) -> np.ndarray:
        """(n, D) -> (n,) int index of the nearest centroid."""
        return nearest(self.transform(features), self.centroids)

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(n, D) -> (n, C) float32 squared distance of each feature to each centroid."""
        x = self.transform(features)
        return np.maximum(((x[:, None, :] - self.centroids[None]) ** 2).sum(axis=2), 0).astype(np.float32)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def rowwise(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(n, D) @ (D, k) -> (n, k), each row its own vector-matrix product. One matrix product
    (BLAS gemm) rounds a row differently with the rows around it (its blocking follows the
    batch's height): 768-d rows projected to 64 in batches of 1, 15 or 5,000 rows differed in
    their low bits in most outputs, so a vector near a tie could go to another centroid as the
    shards cut the batches. A stacked product runs the same (1, D) @ (D, k) for every row, and
    took no longer on 20,000 such rows."""
    return np.matmul(np.asarray(x)[:, None, :], m)[:, 0, :]


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    d = (centroids ** 2).sum(axis=1)[None, :] - 2.0 * rowwise(x, np.ascontiguousarray(centroids.T))
    return np.argmin(d, axis=1)


def pca_projection(x: np.ndarray, dim: int, seed: int, whiten: bool) -> tuple[np.ndarray, np.ndarray]:
    """(m, D) rows -> (mean (D,), components (d, D)) float32: the top min(dim, m, D) principal
    directions, rows scaled by 1/sqrt(variance) when whiten, so (x - mean) @ components.T
    projects (and whitens). Whitening drops directions without variance (fewer rows than
    dimensions): scaled by ~1e6 they would turn rounding noise into structure. Fitted in
    clustering_threads, so every caller gets the same components on any thread count."""
    with clustering_threads():
        pca = PCA(n_components=min(dim, *x.shape), random_state=seed).fit(x)
    components = pca.components_
    if whiten:
        variance = pca.explained_variance_
        keep = variance > 1e-9 * max(variance.sum(), 1e-30)
        components = components[keep] / np.sqrt(variance[keep])[:, None]
    return pca.mean_.astype(np.float32), components.astype(np.float32)


def keyed_batches(batches: Iterable) -> Iterable[tuple[Keys, np.ndarray]]:
    """A stream of (Keys, (n, D)) batches or plain (n, D) arrays -> (Keys, (n, D)) batches,
    plain arrays keyed by their stream position (position_keys)."""
    seen = 0
    for batch in batches:
        if isinstance(batch, np.ndarray):
            batch = (position_keys(seen, len(batch)), batch)
        seen += len(batch[1])
        yield batch


def keyed_sample(batches: Iterable, size: int, seed: int) -> tuple[np.ndarray, int]:
    """Uniform sample without replacement of at most `size` L2-normalised rows of the stream,
    chosen by a seeded hash of each row's key (bottom-k) and sorted by key -> (sample (m, D),
    rows seen). The rows and the seed decide it, not their order or batches."""
    sample = KeyedSample(size, seed)
    for keys, batch in keyed_batches(batches):
        if len(batch):
            sample.add(keys, l2_normalize(batch))
    result = sample.result()
    if len(result) < 2:
        raise ValueError("no segment features to cluster")
    return result[1], sample.seen


def fit_clusters(batches: Callable[[], Iterable], cfg: ClusterConfig,
                 projection: SegmentClusters | None = None) -> SegmentClusters:
    """`batches()` yields the stream of (Keys, (n, D) raw features) batches, or plain (n, D)
    arrays (keyed by position); called once per pass. `projection`: reuse that model's PCA
    (its feature space) instead of fitting one."""
    sample, total = keyed_sample(batches(), cfg.sample_size, cfg.seed)
    if len(sample) < cfg.n_clusters:
        raise TooFewToCluster(f"{len(sample)} segments cannot make {cfg.n_clusters} clusters")
    mean = components = None
    x = sample
    with clustering_threads():
        if projection is not None:
            mean, components = projection.pca_mean, projection.pca_components
        elif cfg.pca_dim:
            mean, components = pca_projection(sample, cfg.pca_dim, cfg.seed, cfg.whiten)
        if components is not None:
            x = (sample - mean) @ components.T
        km = KMeans(n_clusters=cfg.n_clusters, n_init=cfg.n_init, random_state=cfg.seed).fit(x)
    model = SegmentClusters(km.cluster_centers_.astype(np.float32), mean, components, total, 0)
    if total > len(sample):
        _lloyd_passes(model, batches, cfg)
    return model


# Lloyd sums in fixed point: each projected coordinate rounded to a multiple of 2**-24 (below a
# float32's resolution at the unit scale of whitened coordinates) and summed as integers, which
# add in any order to the same total; float sums would follow the stream's order in their low bits.
FIXED_POINT = 2.0 ** 24


def _lloyd_passes(model: SegmentClusters, batches: Callable[[], Iterable], cfg: ClusterConfig) -> None:
    for _ in range(cfg.max_passes):
        sums = np.zeros(model.centroids.shape, object)  # Python ints: exact, never overflow
        counts = np.zeros(len(model.centroids), np.int64)
        for _keys, batch in keyed_batches(batches()):
            if not len(batch):
                continue
            x = model.transform(batch)
            labels = nearest(x, model.centroids)
            fixed = np.rint(x.astype(np.float64) * FIXED_POINT).astype(np.int64)
            for c in np.unique(labels):
                sums[c] += fixed[labels == c].sum(axis=0).astype(object)  # int64 within a batch
            counts += np.bincount(labels, minlength=len(counts))
        moved = counts > 0  # an emptied cluster keeps its centroid
        new = model.centroids.copy()
        means = [[float(v) / FIXED_POINT / int(counts[c]) for v in sums[c]] for c in np.flatnonzero(moved)]
        new[moved] = np.asarray(means, np.float64).reshape(-1, new.shape[1]).astype(np.float32)
        shift = float(((new - model.centroids) ** 2).sum(axis=1).max())
        model.centroids = new
        model.n_passes += 1
        if shift <= cfg.tol:
            break
