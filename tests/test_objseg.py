"""Guided filter and single-object segmentation from oriented eigenvectors."""
import numpy as np
import pytest

from pipeline.features.geometry import GridGeometry
from kernels.guided_filter import box_mean, guided_filter
from pipeline.evaluation.object_metrics import mask_iou
from pipeline.objects.masks import SegmentConfig, patch_mask, segment


def test_box_mean_matches_brute_force_at_the_borders():
    rng = np.random.default_rng(0)
    x = rng.random((7, 9))
    r = 2
    brute = np.array([[x[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].mean() for j in range(9)] for i in range(7)])
    np.testing.assert_allclose(box_mean(x, r), brute, atol=1e-6)
    np.testing.assert_allclose(box_mean(np.stack([x, 2 * x]), r)[1], 2 * brute, atol=1e-6)


def test_guided_filter_keeps_constants_and_snaps_to_edges():
    rng = np.random.default_rng(1)
    guide = rng.random((20, 30, 3))
    np.testing.assert_allclose(guided_filter(guide, np.full((20, 30), 0.7), 4, 1e-2), 0.7, atol=1e-6)
    # An image with a sharp colour edge at column 15 and a blocky mask that ends at column 12.
    image = np.zeros((40, 40, 3))
    image[:, 15:] = [0.9, 0.2, 0.1]
    truth = np.zeros((40, 40), bool)
    truth[:, 15:] = True
    coarse = np.zeros((40, 40))
    coarse[:, 12:] = 1
    for g in (image, image.mean(-1)):
        refined = guided_filter(g, coarse, 8, 1e-3) > 0.5
        assert mask_iou(refined, truth) > mask_iou(coarse > 0.5, truth)
        assert mask_iou(refined, truth) > 0.97


def scene():
    """A 6 x 8 grid (14 px cells, scale 1) over an 84 x 112 image with a bright square object."""
    geom = GridGeometry(grid_h=6, grid_w=8, height=84, width=112, cell_h=14, cell_w=14, scale_y=1, scale_x=1)
    image = np.full((84, 112, 3), 30, np.uint8)
    image[28:56, 42:84] = 220  # cells rows 2..3, cols 3..5
    fiedler = np.full((6, 8), -0.1)
    fiedler[2:4, 3:6] = 0.4
    fiedler[0, 7] = 0.05  # above 0 but below the mean, and a separate component anyway
    return geom, image, np.stack([np.full((6, 8), 0.1), fiedler])


@pytest.mark.parametrize("refine", ["none", "guided"])
def test_segment_finds_the_object(refine):
    geom, image, vecs = scene()
    seg = segment(vecs, image, geom, SegmentConfig(refine=refine))
    truth = np.zeros((84, 112), bool)
    truth[28:56, 42:84] = True
    assert seg.mask.shape == (84, 112) and seg.soft.dtype == np.float32
    assert 0 <= seg.soft.min() and seg.soft.max() <= 1
    np.testing.assert_array_equal(seg.mask, seg.soft > 0.5)
    assert mask_iou(seg.mask, truth) > (0.99 if refine == "guided" else 0.8)
    assert not seg.fallback and seg.patch_mask.sum() == 6


def test_mean_threshold_and_largest_component():
    _, _, vecs = scene()
    cells, _ = patch_mask(vecs, SegmentConfig(threshold=0.0, largest_component=False))
    assert cells.sum() == 7  # the speck at 0.05 is above 0
    cells, _ = patch_mask(vecs, SegmentConfig(threshold=0.0))
    assert cells.sum() == 6  # ... but not in the largest component
    cells, fell_back = patch_mask(np.zeros((2, 6, 8)))
    assert fell_back and cells.all()


@pytest.mark.parametrize("gray", [False, True])
def test_guided_filter_on_a_stack_equals_one_map_at_a_time(gray):
    rng = np.random.default_rng(0)
    guide = rng.random((30, 40) if gray else (30, 40, 3))
    maps = (rng.random((3, 30, 40)) > 0.5).astype(float)
    stacked = guided_filter(guide, maps, 4, 1e-3)
    for i in range(3):
        np.testing.assert_allclose(stacked[i], guided_filter(guide, maps[i], 4, 1e-3), atol=1e-6)
