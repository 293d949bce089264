"""Unsupervised self-training of a patch head on the dataset's own Fiedler masks.

The idea behind SelfMask and FOUND, with no human label: a logistic regression (a 1×1 linear
head) on the frozen patch features is fitted to the Fiedler patch masks of many images of one
unlabelled set, then predicts a foreground probability for every patch of every image. One
linear direction shared by the whole set pools evidence across images, so an image whose own
cut picked a part or the background is pulled toward what the other images agree on. A
second round refits to the head's own masks.

    head = fit_head(features, targets, HeadConfig())      # a sample of the set
    p = head_probability(head, features_of_one_image)     # (h, w) in [0, 1]
    cells = head_mask(head, features_of_one_image)        # (h, w) bool: the head's object

`deep-spectral label --self-train` fits the head on a fixed-seed sample of a run's stored rows
(jobs/label.py, pipeline.batch.head_fitting) and its first object becomes `head_mask`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

from pipeline.objects.localize import largest_component


@dataclass(frozen=True)
class HeadConfig:
    patches_per_image: int = 256  # patches sampled from each fitting image
    C: float = 1.0  # inverse L2 strength of the logistic regression
    balanced: bool = False  # weight foreground and background patches equally
    rounds: int = 1  # 2 = refit once to the first head's own masks
    threshold: float = 0.5  # probability above which a patch is foreground
    seed: int = 0


@dataclass(frozen=True)
class Head:
    weight: np.ndarray  # (D,)
    bias: float

    def to_dict(self) -> dict:
        return {"weight": self.weight.tolist(), "bias": self.bias}

    @classmethod
    def from_dict(cls, data: dict) -> "Head":
        return cls(np.asarray(data["weight"], np.float32), float(data["bias"]))


def _sample(features: list[np.ndarray], targets: list[np.ndarray], cfg: HeadConfig,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for f, t in zip(features, targets):
        f, t = f.reshape(-1, f.shape[-1]), t.ravel()
        take = rng.choice(len(t), min(len(t), cfg.patches_per_image), replace=False)
        xs.append(f[take])
        ys.append(t[take])
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(bool)


def _fit(x: np.ndarray, y: np.ndarray, cfg: HeadConfig) -> Head:
    if y.all() or not y.any():
        raise ValueError("self-training needs foreground and background patches among the targets")
    model = LogisticRegression(C=cfg.C, class_weight="balanced" if cfg.balanced else None, max_iter=500)
    model.fit(x, y)
    return Head(model.coef_[0].astype(np.float32), float(model.intercept_[0]))


def fit_head(features: list[np.ndarray], targets: list[np.ndarray], cfg: HeadConfig = HeadConfig()) -> Head:
    """Per-image (h, w, D) patch features and (h, w) bool target masks (e.g. Fiedler masks)
    -> the head; with rounds=2 the second fit uses the first head's masks of the same images."""
    if len(features) != len(targets) or not features:
        raise ValueError(f"need as many target masks as feature maps (and at least one), got "
                         f"{len(features)} and {len(targets)}")
    rng = np.random.default_rng(cfg.seed)
    head = _fit(*_sample(features, targets, cfg, rng), cfg)
    for _ in range(cfg.rounds - 1):
        targets = [head_probability(head, f) > cfg.threshold for f in features]
        head = _fit(*_sample(features, targets, cfg, rng), cfg)
    return head


def head_probability(head: Head, features: np.ndarray) -> np.ndarray:
    """(h, w, D) patch features -> (h, w) foreground probability."""
    z = features.astype(np.float32) @ head.weight + head.bias
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def head_mask(head: Head, features: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(h, w, D) patch features -> (h, w) bool: the largest component of p > threshold, or of
    the most probable patches when none passes (a head never answers "no object")."""
    p = head_probability(head, features)
    mask = p > threshold
    if not mask.any():
        mask = p >= p.max()
    return largest_component(mask, p)
