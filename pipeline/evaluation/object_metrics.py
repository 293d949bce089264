"""Evaluation metrics: mask IoU, pixel accuracy, max F-beta, box IoU and CorLoc.

Conventions follow the reference evaluation (deep-spectral-methods' object-segmentation
metrics): F-beta with beta² = 0.3, thresholds k/255 for k = 1..254 on a soft map in [0, 1],
precision 1 for an empty prediction and recall 1 for an empty ground truth, and max-F is the
maximum over thresholds of the per-image F averaged over images.
"""
from __future__ import annotations

import numpy as np

from pipeline.objects.localize import box_iou

BETA2 = 0.3
THRESHOLDS = np.arange(1, 255) / 255.0  # (254,)


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """(H, W) bool, (H, W) bool -> |pred ∩ gt| / |pred ∪ gt|; 1.0 when both are empty."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    union = np.count_nonzero(pred | gt)
    return float(np.count_nonzero(pred & gt) / union) if union else 1.0


def pixel_accuracy(pred: np.ndarray, gt: np.ndarray) -> float:
    """(H, W) bool, (H, W) bool -> fraction of pixels labelled correctly."""
    return float(np.mean(pred.astype(bool) == gt.astype(bool)))


def precision_recall_curve(soft: np.ndarray, gt: np.ndarray,
                           thresholds: np.ndarray = THRESHOLDS) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) soft map in [0, 1] and (H, W) bool -> (precision (T,), recall (T,)) of soft > t."""
    gt = gt.astype(bool)
    values = np.sort(soft.ravel())
    on_gt = np.sort(soft[gt])
    predicted = values.size - np.searchsorted(values, thresholds, side="right")
    hits = on_gt.size - np.searchsorted(on_gt, thresholds, side="right")
    precision = np.where(predicted > 0, hits / np.maximum(predicted, 1), 1.0)
    recall = np.full(thresholds.shape, 1.0) if on_gt.size == 0 else hits / on_gt.size
    return precision, recall


def f_beta(precision: np.ndarray, recall: np.ndarray, beta2: float = BETA2) -> np.ndarray:
    """Elementwise F-beta; 0 where precision and recall are both 0."""
    num = (1 + beta2) * precision * recall
    den = beta2 * precision + recall
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def max_f_beta(precisions: np.ndarray, recalls: np.ndarray, beta2: float = BETA2) -> float:
    """(n_images, T) precision and recall curves -> max over thresholds of the mean F-beta."""
    return float(f_beta(np.asarray(precisions), np.asarray(recalls), beta2).mean(axis=0).max())


def best_box_iou(pred: np.ndarray, gt_boxes: np.ndarray) -> float:
    """(4,) predicted box, (n, 4) ground-truth boxes -> max IoU with any of them (0 if n = 0)."""
    return max((box_iou(pred, gt) for gt in np.asarray(gt_boxes).reshape(-1, 4)), default=0.0)


def corloc(preds: list[np.ndarray], gts: list[np.ndarray], iou: float = 0.5) -> float:
    """Fraction of images whose predicted box has IoU >= `iou` with ANY of its ground-truth
    boxes. preds: one (4,) box per image; gts: one (n_i, 4) array per image."""
    if not preds:
        return float("nan")
    return float(np.mean([best_box_iou(p, g) >= iou for p, g in zip(preds, gts)]))
