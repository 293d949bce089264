"""Semantic segmentation scores for unsupervised labels: a dataset-wide confusion matrix and
mIoU after Hungarian matching of predicted labels to classes (as in the paper, background
included).

    confusion(pred, gt, n_pred, n_classes, ignore_index)   (H, W) pair -> (n_pred, n_classes) counts
    hungarian_miou(confusion)                              -> HungarianScore

Matching maximises the matched pixels over the whole dataset (one assignment for all
images). Classes without ground-truth pixels are left out of the matching and the mean
(IoU NaN); a class left without a prediction (fewer labels than classes) scores IoU 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


def confusion(pred: np.ndarray, gt: np.ndarray, n_pred: int, n_classes: int,
              ignore_index: int | None = 255) -> np.ndarray:
    """(H, W) predicted labels 0..n_pred-1 and ground-truth classes 0..n_classes-1 ->
    (n_pred, n_classes) int64 pixel counts; pixels whose class is ignore_index are skipped."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    pred, gt = pred.ravel().astype(np.int64), gt.ravel().astype(np.int64)
    keep = gt != ignore_index if ignore_index is not None else np.ones(gt.shape, bool)
    pred, gt = pred[keep], gt[keep]
    if len(gt) and (gt.max() >= n_classes or gt.min() < 0):
        raise ValueError(f"ground truth has class {gt.max()} outside 0..{n_classes - 1} "
                         "(pass a label map or the right ignore index)")
    if len(pred) and pred.max() >= n_pred:
        raise ValueError(f"prediction has label {pred.max()} outside 0..{n_pred - 1}")
    return np.bincount(pred * n_classes + gt, minlength=n_pred * n_classes).reshape(n_pred, n_classes)


@dataclass(frozen=True)
class HungarianScore:
    miou: float
    iou: np.ndarray  # (n_classes,) per ground-truth class
    match: np.ndarray  # (n_classes,) predicted label matched to each class, -1 = none
    pixel_accuracy: float  # matched pixels / all scored pixels


def hungarian_miou(counts: np.ndarray) -> HungarianScore:
    """(n_pred, n_classes) confusion -> mIoU over classes under the best one-to-one matching."""
    counts = np.asarray(counts, dtype=np.int64)
    pred_total, gt_total = counts.sum(axis=1), counts.sum(axis=0)
    present = np.flatnonzero(gt_total > 0)
    rows, cols = linear_sum_assignment(counts[:, present], maximize=True)
    match = np.full(counts.shape[1], -1)
    match[present[cols]] = rows
    iou = np.full(counts.shape[1], np.nan)
    iou[present] = 0.0
    for c in present[cols]:
        tp = counts[match[c], c]
        iou[c] = tp / (pred_total[match[c]] + gt_total[c] - tp)
    total = counts.sum()
    accuracy = counts[rows, present[cols]].sum() / total if total else float("nan")
    miou = float(np.nanmean(iou)) if len(present) else float("nan")
    return HungarianScore(miou, iou, match, float(accuracy))
