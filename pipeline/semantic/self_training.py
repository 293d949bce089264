"""Optional self-training: a linear segmentation head on frozen patch features, trained on
the pseudo-labels, whose predictions replace them.

    train_head(batches, n_labels, cfg)    stream of (patch features (n, C), labels (n,)) -> head
    predict_probabilities(head, features) (h, w, C) -> (n_labels, h, w) class probabilities

The head sees every patch's own feature, so it can relabel patches that the per-image
k-means put in the wrong segment; whether that helps is measured, not assumed (README).
Training streams the data once per epoch, so memory does not grow with the dataset.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch


@dataclass(frozen=True)
class SelfTrainConfig:
    epochs: int = 10
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_patches: int = 4096
    seed: int = 0


def _normalized(features: np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    return torch.nn.functional.normalize(x, dim=-1)


def train_head(batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], n_labels: int,
               cfg: SelfTrainConfig) -> torch.nn.Linear:
    """`batches()` starts one epoch: yields (n, C) features and (n,) int labels 0..n_labels-1."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    head: torch.nn.Linear | None = None
    optimizer = None
    for _ in range(cfg.epochs):
        for features, labels in batches():
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
def predict_probabilities(head: torch.nn.Linear, features: np.ndarray) -> np.ndarray:
    """(h, w, C) patch features -> (n_labels, h, w) float32 softmax probabilities."""
    h, w, c = features.shape
    logits = head(_normalized(features.reshape(-1, c)))
    return torch.softmax(logits, dim=-1).T.reshape(-1, h, w).numpy()
