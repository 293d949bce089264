"""Optional self-training: a linear segmentation head on frozen patch features, trained on
the pseudo-labels, whose predictions replace them.

    joined(*parts)                        features of the same patches, joined at unit norm each
    train_head(batches, n_labels, cfg)    stream of (patch features (n, C'), labels (n,)) -> head
    predict_probabilities(head, features) (h, w, C) -> (n_labels, h, w) class probabilities
    with_labels(probabilities, grid, w)   the head's probabilities blended with the pseudo-labels

The head sees every patch's own feature, so it can relabel patches that the per-image
k-means put in the wrong segment; whether that helps is measured, not assumed (README).
Training streams the data once per epoch, so memory does not grow with the dataset; with
`sample_patches` one pass draws a seeded uniform sample of at most that many patches, keyed by
(image, cell) so that neither the sample nor its order depends on the shards', and the epochs
run over it (memory bounded by the sample, one read of the shards instead of one per
epoch). `features` picks the patch features: the graph's tokens, or the kinds the segments
pooled (on a backbone whose middle blocks carry the classes, those; docs/semantic.md).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from pipeline.config import check
from pipeline.features.supervised import EMBEDDERS
from pipeline.semantic.clustering import CLUSTERING_THREADS
from pipeline.semantic.keyed_sample import KeyedSample, position_keys

HEAD_FEATURES = ("tokens", "segment")

# The head's products split across torch's intra-op threads, so its weights, like the
# clustering's centroids, depend on the caller's thread count in their low bits: VOC07's head
# trained on 1 and on 2 threads gave the same shards 1,670 of 1,675 equal label maps. The head
# trains and predicts on a fixed count, so a seed gives the same labels in a Ray worker,
# in-process, or on any machine's core count.
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
    # What the head sees of each patch (pipeline.semantic.labelling.HEAD_FEATURE_COLUMNS): "tokens",
    # the graph's stored features (store_features); "segment", the features the segments pooled,
    # stored per patch (SegmentsConfig.store_patches), e.g. pool+block9; None, "segment" where
    # the shards hold them, else "tokens" (made definite by labelling.with_head_features).
    features: Optional[str] = None
    # The final scores: (1 - w) * the head's probabilities + w * the pseudo-labels' one-hot
    # (with_labels). The head overrules a label only where it is confident, so one or the
    # other's isolated mistakes give way. 0 = the head alone.
    label_weight: float = 0.3
    # A second network (a supervised embedder of pipeline.features.supervised.EMBEDDERS) whose
    # dense feature map the head reads too, joined to `features` per patch
    # (pipeline.semantic.head_maps); None = the stored features alone.
    backbone: Optional[str] = None

    # Settings measured and not adopted (docs/semantic.md, "tried, not adopted"), removed since,
    # each with the value at which it was off: an MLP head (hidden), inverse-frequency class
    # weights (balance), a PCA whitening in front of the head (whiten), the neighbourhood mean
    # joined to each patch (context), training only on segments of low distance ratio
    # (max_ratio). PseudoLabelConfig.digest puts them back at these values, so runs stored
    # before keep their digests; a stored config holding one at this value still loads, at any
    # other it is refused (pipeline.settings.without_removed).
    REMOVED_SETTINGS = {"hidden": 0, "balance": False, "whiten": 0, "context": 0, "max_ratio": 1.0}

    def __post_init__(self):
        where = "pseudo_labels.self_train"
        check(0 <= self.label_weight < 1, f"{where}.label_weight", "in [0, 1) (0: the head alone)", self.label_weight)
        check(self.features is None or self.features in HEAD_FEATURES, f"{where}.features",
              f"one of {list(HEAD_FEATURES)} (or none: segment where stored, else tokens)", self.features)
        check(self.epochs >= 1 and self.batch_patches >= 1, f"{where}.epochs / batch_patches", ">= 1",
              (self.epochs, self.batch_patches))
        check(self.backbone is None or self.backbone in EMBEDDERS, f"{where}.backbone",
              f"one of {sorted(EMBEDDERS)}", self.backbone)


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


def patch_sample(batches: Iterable[tuple], size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform sample without replacement of at most `size` (feature, label) patches of the
    stream -> ((m, C) float32, (m,) int64), sorted by key. A batch is (features (n, C), labels
    (n,), Keys): each patch named by its image and its cell's index, and the sample is the `size`
    patches of smallest seeded hash of that key (pipeline.semantic.keyed_sample), so the images,
    their labels and the seed decide it, not the order the shards hold the images in (a
    reservoir's sample did, and the head trained on it moved self-trained VOC07 figures by a
    seed's spread). A batch without Keys, (features, labels), is keyed by stream position."""
    sample, seen = KeyedSample(size, seed), 0
    for batch in batches:
        features, labels = batch[0], batch[1]
        keys = batch[2] if len(batch) > 2 else position_keys(seen, len(labels))
        seen += len(labels)
        sample.add(keys, np.asarray(features, np.float32), np.asarray(labels, np.int64))
    result = sample.result()
    if len(result) < 3 or not len(result[2]):
        raise ValueError("no patches to train the head on")
    return result[1], result[2]


@head_threads()
def train_head(batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], n_labels: int,
               cfg: SelfTrainConfig) -> torch.nn.Module:
    """`batches()` starts one epoch: yields (n, C) features and (n,) int labels 0..n_labels-1
    (and the patches' Keys, which patch_sample reads). With cfg.sample_patches the epochs run
    over the sample, in key order; without, over the stream in the order it comes (shard order)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.sample_patches:
        x, y = patch_sample(batches(), cfg.sample_patches, cfg.seed)

        def epoch():
            return iter([(x, y)])
    else:
        epoch = batches
    head: torch.nn.Module | None = None
    optimizer = None
    for _ in range(cfg.epochs):
        for features, labels, *_keys in epoch():
            if head is None:
                head = torch.nn.Linear(features.shape[1], n_labels)
                optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            order = rng.permutation(len(labels))
            for s in range(0, len(order), cfg.batch_patches):
                idx = order[s:s + cfg.batch_patches]
                loss = torch.nn.functional.cross_entropy(
                    head(_normalized(features[idx])), torch.as_tensor(labels[idx], dtype=torch.long))
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
