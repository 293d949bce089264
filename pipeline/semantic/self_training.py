"""Optional self-training: a linear segmentation head on frozen patch features, trained on
the pseudo-labels, whose predictions replace them.

    head_input(grid, context)             (h, w, C) patch features -> (h, w, C') what the head reads
    joined(*parts)                        features of the same patches, joined at unit norm each
    train_head(batches, n_labels, cfg)    stream of (patch features (n, C'), labels (n,)) -> head
    predict_probabilities(head, features) (h, w, C) -> (n_labels, h, w) class probabilities
    with_labels(probabilities, grid, w)   the head's probabilities blended with the pseudo-labels

The head sees every patch's own feature, so it can relabel patches that the per-image
k-means put in the wrong segment; whether that helps is measured, not assumed (README).
Training streams the data once per epoch, so memory does not grow with the dataset; with
`sample_patches` one pass draws a seeded uniform sample of at most that many patches and the
epochs run over it (memory bounded by the sample, one read of the shards instead of one per
epoch). `features` picks the patch features: the graph's tokens, or the kinds the segments
pooled (on a backbone whose middle blocks carry the classes, those; docs/semantic.md).
`hidden` > 0 makes the head a one-hidden-layer MLP; `balance` weights the loss by the inverse
frequency of each pseudo-label in the sample (background dominates the patches);
`whiten` > 0 puts a fixed PCA whitening of the sample (to that many dimensions) in front of the
head, as the clustering's --whiten does for the segments (the same features' few dominant
directions otherwise dominate a head trained with a few epochs of AdamW).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from pipeline.config import check
from pipeline.features.supervised import EMBEDDERS
from pipeline.semantic.clustering import CLUSTERING_THREADS, pca_projection

HEAD_FEATURES = ("tokens", "segment")

# The head's products split across torch's intra-op threads, so its weights, like the
# clustering's centroids, depend on the caller's thread count in their low bits: VOC07's head
# trained on 1 and on 2 threads gave the same shards 1,670 of 1,675 equal label maps. The head
# trains and predicts on a fixed count (its whitening PCA is fixed by pca_projection), so a
# seed gives the same labels in a Ray worker, in-process, or on any machine's core count.
HEAD_THREADS = CLUSTERING_THREADS


@contextmanager
def head_threads():
    """The context (or decorator) the head trains and predicts in: HEAD_THREADS torch
    threads; the caller's count is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(HEAD_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class SelfTrainConfig:
    epochs: int = 10
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_patches: int = 4096
    seed: int = 0
    sample_patches: Optional[int] = None  # None: stream every patch once per epoch
    hidden: int = 0  # 0: linear head
    balance: bool = False  # sample_patches only: inverse-frequency class weights
    whiten: int = 0  # sample_patches only: PCA-whitened dimensions in front of the head (0 = none)
    # What the head sees of each patch (pipeline.semantic.labelling.HEAD_FEATURE_COLUMNS): "tokens",
    # the graph's stored features (store_features); "segment", the features the segments pooled,
    # stored per patch (SegmentsConfig.store_patches), e.g. pool+block9; None, "segment" where
    # the shards hold them, else "tokens" (made definite by labelling.with_head_features).
    features: Optional[str] = None
    # Context: each patch's feature joined with the mean over its (2r+1)^2 neighbourhood on the
    # grid (head_input), so a per-patch head sees what surrounds it; 0 = the patch alone.
    context: int = 0
    # Train only on the foreground segments whose distance ratio (nearest centroid over second
    # nearest, SegmentClusters.distance_ratio) is at most this: their label is least in doubt.
    # Background segments are always trained on; 1.0 = every segment.
    max_ratio: float = 1.0
    # The final scores: (1 - w) * the head's probabilities + w * the pseudo-labels' one-hot
    # (with_labels). The head overrules a label only where it is confident, so one or the
    # other's isolated mistakes give way. 0 = the head alone.
    label_weight: float = 0.3
    # A second network (a supervised embedder of pipeline.features.supervised.EMBEDDERS) whose
    # dense feature map the head reads too, joined to `features` per patch
    # (pipeline.semantic.head_maps); None = the stored features alone.
    backbone: Optional[str] = None

    def __post_init__(self):
        where = "pseudo_labels.self_train"
        check(0 <= self.label_weight < 1, f"{where}.label_weight", "in [0, 1) (0: the head alone)", self.label_weight)
        check(0 < self.max_ratio <= 1, f"{where}.max_ratio", "a distance ratio in (0, 1]", self.max_ratio)
        check(self.features is None or self.features in HEAD_FEATURES, f"{where}.features",
              f"one of {list(HEAD_FEATURES)} (or none: segment where stored, else tokens)", self.features)
        check(self.epochs >= 1 and self.batch_patches >= 1, f"{where}.epochs / batch_patches", ">= 1",
              (self.epochs, self.batch_patches))
        check(not self.balance or bool(self.sample_patches), f"{where}.balance",
              "off without sample_patches (it weights classes by their share of the sample)", self.balance)
        check(not self.whiten or bool(self.sample_patches), f"{where}.whiten",
              "0 without sample_patches (PCA is fitted on the sample)", self.whiten)
        check(self.backbone is None or self.backbone in EMBEDDERS, f"{where}.backbone",
              f"one of {sorted(EMBEDDERS)}", self.backbone)


def head_input(grid: np.ndarray, context: int) -> np.ndarray:
    """(h, w, C) patch features -> what the head reads of each patch: (h, w, C) as they are, or
    with context r > 0 (h, w, 2C): the feature and its (2r+1)^2 neighbourhood mean (edges
    repeated), each at unit norm, joined and scaled by 1/sqrt(2)."""
    if not context:
        return grid
    from scipy.ndimage import uniform_filter

    x = np.asarray(grid, dtype=np.float32)
    return joined(x, uniform_filter(x, size=(2 * context + 1, 2 * context + 1, 1), mode="nearest"))


def joined(*parts: np.ndarray) -> np.ndarray:
    """(..., C_i) features of the same patches -> (..., sum C_i) float32: each part at unit norm,
    the whole scaled by 1/sqrt(number of parts), so a cosine between two patches is the mean
    of the parts' cosines, whatever their widths."""
    unit = [np.asarray(v, np.float32) for v in parts]
    unit = [v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12) for v in unit]
    return (np.concatenate(unit, axis=-1) / np.sqrt(len(parts))).astype(np.float32)


def _normalized(features: np.ndarray) -> torch.Tensor:
    # A copy: stored features arrive as read-only views of Arrow buffers, which torch cannot wrap.
    x = torch.from_numpy(np.array(features, dtype=np.float32))
    return torch.nn.functional.normalize(x, dim=-1)


def _head(n_features: int, n_labels: int, hidden: int) -> torch.nn.Module:
    if not hidden:
        return torch.nn.Linear(n_features, n_labels)
    return torch.nn.Sequential(torch.nn.Linear(n_features, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, n_labels))


def whitening_layer(x: np.ndarray, dim: int, seed: int) -> torch.nn.Linear:
    """(m, C) raw patch features -> a frozen Linear(C, d) that maps L2-normalised features to
    their top-d principal components at unit variance (the clustering's pca_projection)."""
    z = _normalized(x).numpy()
    mean, scale = pca_projection(z, dim, seed, whiten=True)
    layer = torch.nn.Linear(z.shape[1], len(scale))
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(scale))
        layer.bias.copy_(torch.from_numpy(-scale @ mean))
    layer.requires_grad_(False)
    return layer


def patch_sample(batches: Iterable[tuple[np.ndarray, np.ndarray]], size: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform sample without replacement of at most `size` (feature, label) patches of the
    stream (Algorithm R, vectorised per batch) -> ((m, C) float32, (m,) int64)."""
    rng = np.random.default_rng(seed)
    x = y = None
    filled = seen = 0
    for features, labels in batches:
        if x is None:
            x, y = np.empty((size, features.shape[1]), np.float32), np.empty(size, np.int64)
        take = min(size - filled, len(labels))
        x[filled:filled + take], y[filled:filled + take] = features[:take], labels[:take]
        filled += take
        if len(labels) > take:
            slots = rng.integers(0, np.arange(seen + take, seen + len(labels)) + 1)
            keep = slots < size
            x[slots[keep]], y[slots[keep]] = features[take:][keep], labels[take:][keep]
        seen += len(labels)
    if x is None or not filled:
        raise ValueError("no patches to train the head on")
    return x[:filled], y[:filled]


@head_threads()
def train_head(batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], n_labels: int,
               cfg: SelfTrainConfig) -> torch.nn.Module:
    """`batches()` starts one epoch: yields (n, C) features and (n,) int labels 0..n_labels-1."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    weight = front = None
    if cfg.sample_patches:
        x, y = patch_sample(batches(), cfg.sample_patches, cfg.seed)
        if cfg.balance:
            counts = np.bincount(y, minlength=n_labels).astype(np.float64)
            weight = torch.as_tensor(np.where(counts > 0, len(y) / np.maximum(counts, 1) / n_labels, 0),
                                     dtype=torch.float32)
        if cfg.whiten:
            front = whitening_layer(x, cfg.whiten, cfg.seed)

        def epoch():
            return iter([(x, y)])
    else:
        epoch = batches
    head: torch.nn.Module | None = None
    optimizer = None
    for _ in range(cfg.epochs):
        for features, labels in epoch():
            if head is None:
                head = _head(front.out_features if front else features.shape[1], n_labels, cfg.hidden)
                head = torch.nn.Sequential(front, head) if front else head
                optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            order = rng.permutation(len(labels))
            for s in range(0, len(order), cfg.batch_patches):
                idx = order[s:s + cfg.batch_patches]
                loss = torch.nn.functional.cross_entropy(
                    head(_normalized(features[idx])), torch.as_tensor(labels[idx], dtype=torch.long), weight=weight)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    if head is None:
        raise ValueError("no patches to train the head on")
    return head.eval()


@torch.no_grad()
@head_threads()
def predict_probabilities(head: torch.nn.Module, features: np.ndarray) -> np.ndarray:
    """(h, w, C) patch features -> (n_labels, h, w) float32 softmax probabilities."""
    h, w, c = features.shape
    logits = head(_normalized(features.reshape(-1, c)))
    return torch.softmax(logits, dim=-1).T.reshape(-1, h, w).numpy()


def with_labels(probabilities: np.ndarray, grid: np.ndarray, weight: float) -> np.ndarray:
    """(L, h, w) head probabilities, (h, w) pseudo-label ids 0..L-1, weight in [0, 1) ->
    (L, h, w) float32: (1 - weight) * probabilities + weight * one-hot(grid)."""
    onehot = np.arange(len(probabilities))[:, None, None] == grid
    return ((1 - weight) * probabilities + weight * onehot).astype(np.float32)
