"""The self-trained patch head recovers a foreground planted in synthetic features."""
import numpy as np
import pytest

from pipeline.evaluation.object_metrics import mask_iou
from pipeline.objects.self_training import Head, HeadConfig, fit_head, head_probability


def planted(n_images=40, h=12, w=16, d=32, noise_rate=0.3, seed=0):
    """Features with one foreground direction plus noise, the true (h, w) masks, and noisy
    targets: on `noise_rate` of the images the 'Fiedler mask' is wrong (the background or a
    random block), as a per-image cut is on a fifth of real images."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    feats, truths, targets = [], [], []
    for i in range(n_images):
        truth = np.zeros((h, w), bool)
        y, x = rng.integers(0, h - 5), rng.integers(0, w - 6)
        truth[y:y + rng.integers(3, 6), x:x + rng.integers(3, 7)] = True
        f = rng.normal(size=(h, w, d)) + 2.5 * np.where(truth[..., None], direction, -direction)
        feats.append(f.astype(np.float32))
        truths.append(truth)
        if i < noise_rate * n_images:
            wrong = ~truth if i % 2 else np.zeros((h, w), bool)
            if not i % 2:
                wrong[:4, -5:] = True
            targets.append(wrong)
        else:
            targets.append(truth)
    return feats, truths, targets


def test_head_recovers_the_planted_foreground_even_where_targets_were_wrong():
    feats, truths, targets = planted()
    head = fit_head(feats, targets, HeadConfig(patches_per_image=96))
    ious = [mask_iou(head_probability(head, f) > 0.5, t) for f, t in zip(feats, truths)]
    target_ious = [mask_iou(g, t) for g, t in zip(targets, truths)]
    assert np.mean(target_ious) < 0.75  # 30% of the targets are wrong ...
    wrong = slice(0, 12)
    assert np.mean(ious[wrong]) > 0.8  # ... and the head gets those images right anyway
    assert np.mean(ious) > max(0.8, np.mean(target_ious) + 0.1)
    # A second round, fitted to the first head's masks, stays on the planted foreground.
    head2 = fit_head(feats, targets, HeadConfig(patches_per_image=96, rounds=2))
    assert np.mean([mask_iou(head_probability(head2, f) > 0.5, t) for f, t in zip(feats, truths)]) > 0.8


def test_head_probability_is_the_logistic_of_the_linear_score_and_round_trips():
    head = Head(np.array([1.0, -2.0], np.float32), 0.5)
    p = head_probability(head, np.array([[[0.0, 0.0], [1.0, 1.0]]]))
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-np.array([[0.5, -0.5]]))), rtol=1e-6)
    back = Head.from_dict(head.to_dict())
    np.testing.assert_array_equal(back.weight, head.weight) and back.bias == head.bias


def test_head_refuses_targets_of_one_class_and_mismatched_lists():
    feats, _, _ = planted(n_images=3)
    with pytest.raises(ValueError, match="foreground and background"):
        fit_head(feats, [np.zeros(f.shape[:2], bool) for f in feats])
    with pytest.raises(ValueError, match="as many target masks"):
        fit_head(feats, [])


def test_head_and_segment_options_round_trip_through_their_json():
    import dataclasses
    import json

    from pipeline.objects.masks import SegmentConfig

    head = HeadConfig(patches_per_image=64, C=0.1, balanced=True, rounds=2, threshold=0.4, seed=3)
    assert HeadConfig(**json.loads(json.dumps(dataclasses.asdict(head)))) == head
    seg = SegmentConfig(refine="bilateral", sigma_spatial=8.0, sigma_luma=12.0, sigma_chroma=4.0, lam=64.0)
    assert SegmentConfig(**json.loads(json.dumps(dataclasses.asdict(seg)))) == seg


def test_head_mask_is_the_largest_component_and_never_empty():
    from pipeline.objects.self_training import head_mask

    head = Head(np.array([1.0], np.float32), 0.0)
    f = np.full((5, 6, 1), -3.0, np.float32)
    f[0:2, 0:2] = 3.0  # 4 cells
    f[3:5, 2:6] = 3.0  # 8 cells: the larger component
    assert np.array_equal(head_mask(head, f), f[..., 0] > 0) is False
    assert head_mask(head, f).sum() == 8 and head_mask(head, f)[3:5, 2:6].all()
    low = np.full((5, 6, 1), -3.0, np.float32)
    low[2, 3] = -1.0  # p < 0.5 everywhere: the most probable cell
    assert np.argwhere(head_mask(head, low)).tolist() == [[2, 3]]
