"""Metrics on cases small enough to compute by hand."""
import numpy as np
import pytest

from pipeline.evaluation.object_metrics import (THRESHOLDS, best_box_iou, corloc, f_beta, mask_iou, max_f_beta,
                                                pixel_accuracy, precision_recall_curve)
from pipeline.objects.localize import box_iou


def test_mask_iou_and_accuracy():
    pred = np.zeros((4, 4), bool)
    gt = np.zeros((4, 4), bool)
    pred[:2, :2] = True  # 4 px
    gt[:2, :] = True  # 8 px, contains pred
    assert mask_iou(pred, gt) == pytest.approx(4 / 8)
    assert pixel_accuracy(pred, gt) == pytest.approx(12 / 16)
    assert mask_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0
    assert mask_iou(pred, ~pred) == 0.0


def test_box_iou():
    a = np.array([0, 0, 10, 10.0])
    assert box_iou(a, a) == 1.0
    assert box_iou(a, np.array([5, 0, 15, 10.0])) == pytest.approx(50 / 150)
    assert box_iou(a, np.array([10, 10, 20, 20.0])) == 0.0  # touching corners
    assert box_iou(a, np.array([2, 2, 4, 4.0])) == pytest.approx(4 / 100)


def test_corloc_counts_a_hit_on_any_gt_box():
    gts = [np.array([[0, 0, 10, 10], [50, 50, 60, 60.0]]),  # pred matches the second box only
           np.array([[0, 0, 10, 10.0]]),                   # IoU 50/150 < 0.5: a miss
           np.array([[0, 0, 10, 10], [0, 0, 20, 20.0]])]   # IoU exactly 0.5 with the second: a hit
    preds = [np.array([50, 50, 60, 61.0]), np.array([5, 0, 15, 10.0]), np.array([0, 0, 20, 10.0])]
    assert best_box_iou(preds[0], gts[0]) == pytest.approx(100 / 110)
    assert best_box_iou(preds[2], gts[2]) == pytest.approx(0.5)
    assert corloc(preds, gts) == pytest.approx(2 / 3)
    assert best_box_iou(preds[0], np.zeros((0, 4))) == 0.0


def test_precision_recall_and_max_f_by_hand():
    gt = np.array([[True, True, False, False]])
    soft = np.array([[0.9, 0.4, 0.6, 0.1]])
    p, r = precision_recall_curve(soft, gt)
    t = THRESHOLDS
    # soft > t: t < 0.4 -> {0.9, 0.4, 0.6} (P 2/3, R 1); 0.4 <= t < 0.6 -> {0.9, 0.6} (P 1/2, R 1/2);
    # 0.6 <= t < 0.9 -> {0.9} (P 1, R 1/2); t >= 0.9 -> nothing (P 1 by convention, R 0)
    np.testing.assert_allclose(p[(t > 0.1) & (t < 0.4)], 2 / 3)
    np.testing.assert_allclose(r[(t > 0.1) & (t < 0.4)], 1)
    np.testing.assert_allclose(p[(t >= 0.6) & (t < 0.9)], 1)
    np.testing.assert_allclose(r[(t >= 0.6) & (t < 0.9)], 0.5)
    np.testing.assert_allclose(r[t >= 0.9], 0)
    f_high = 1.3 * 1 * 0.5 / (0.3 * 1 + 0.5)  # 0.8125
    f_low = 1.3 * (2 / 3) / (0.3 * 2 / 3 + 1)  # 0.7222
    assert max_f_beta([p], [r]) == pytest.approx(max(f_high, f_low))
    # Two images: the maximum of the mean curve, not the mean of the maxima.
    p2, r2 = precision_recall_curve(1 - soft, gt)
    curve = (f_beta(p, r) + f_beta(p2, r2)) / 2
    assert max_f_beta([p, p2], [r, r2]) == pytest.approx(curve.max())
    assert max_f_beta([p, p2], [r, r2]) < (f_beta(p, r).max() + f_beta(p2, r2).max()) / 2


def test_f_beta_handles_zeros():
    assert f_beta(np.array([0.0]), np.array([0.0]))[0] == 0.0
    assert f_beta(np.array([1.0]), np.array([1.0]))[0] == pytest.approx(1.0)
