"""TokenCut's bilateral solver: grid bookkeeping, edge snapping, and its place as a refiner."""
import json

import numpy as np
import pytest
from scipy import ndimage

from pipeline.evaluation.object_metrics import mask_iou
from pipeline.objects.bilateral_solver import bilateral_grid, bilateral_solve, bistochastize
from pipeline.objects.instances import LabelConfig, label_digest, soft_masks
from pipeline.objects.masks import SegmentConfig, segment
from tests.test_objseg import scene


def two_colour_image(h=96, w=128, edge=70, seed=0):
    """An (h, w, 3) red | blue image split at column `edge`, with mild noise."""
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3))
    image[:, :edge] = (200, 60, 40)
    image[:, edge:] = (30, 90, 200)
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


def test_grid_splat_slice_and_bistochastic_scales():
    image = two_colour_image()
    clean = np.where(np.arange(128)[None, :, None] < 70, [200, 60, 40], [30, 90, 200]).repeat(96, 0).astype(np.uint8)
    # 96 x 128 px in 16 px cells: 6 x 8 spatial cells, one colour each except column cell 4
    # (px 64..79), which holds both colours: 48 + 6 vertices.
    grid = bilateral_grid(clean, sigma_spatial=16, sigma_luma=16, sigma_chroma=8)
    assert grid.n_vertices == 54
    counts = grid.splat(np.ones(grid.n_pixels))
    assert sorted(set(counts)) == [16 * 6, 16 * 10, 256]
    # Spatial neighbours only (the two colours are many luma/chroma cells apart): along x each
    # row of 8 cells has 7 links of one colour (14 directed entries) + the split cell's.
    x_links = grid.blurs[0]
    assert abs(x_links - x_links.T).sum() == 0 and set(np.unique(x_links.data)) == {1.0}
    assert all(b.nnz == 0 for b in grid.blurs[2:])
    grid = bilateral_grid(image)  # with noise: more vertices, same normalisation
    counts = grid.splat(np.ones(grid.n_pixels))
    n, m = bistochastize(grid)
    np.testing.assert_allclose(n * grid.blur(n), m)
    np.testing.assert_allclose(m, counts, rtol=0.05)  # converged: row sums match the pixel counts


def test_solver_sharpens_a_blurred_step_edge():
    image = two_colour_image()
    truth = np.zeros(image.shape[:2], bool)
    truth[:, :70] = True
    coarse = np.zeros(image.shape[:2])
    coarse[:, :80] = 1  # the patch mask ends 10 px past the colour edge ...
    blurred = ndimage.uniform_filter(coarse, 24)  # ... and is blurred, as a bilinear upsampling is
    before = mask_iou(blurred > 0.5, truth)
    solved = bilateral_solve(image, blurred)
    after = mask_iou(solved > 0.5, truth)
    assert before == pytest.approx(0.875)
    assert after > 0.99
    # Without colour (a flat image) there is no edge to snap to: the step stays where it was.
    flat = bilateral_solve(np.full_like(image, 128), blurred)
    assert mask_iou(flat > 0.5, truth) < 0.9


def test_solver_keeps_constants_and_a_stack_equals_one_map_at_a_time():
    image = two_colour_image(48, 64, 30)
    np.testing.assert_allclose(bilateral_solve(image, np.full((48, 64), 0.3)), 0.3, atol=1e-6)
    rng = np.random.default_rng(3)
    maps = (rng.random((48, 64, 2)) > 0.5).astype(float)
    stacked = bilateral_solve(image, maps)
    for i in range(2):
        np.testing.assert_allclose(stacked[..., i], bilateral_solve(image, maps[..., i]), atol=1e-9)
    with pytest.raises(ValueError, match="differ in size"):
        bilateral_solve(image, np.zeros((10, 10)))


def test_segment_and_label_refine_with_the_solver():
    geom, image, vecs = scene()
    truth = np.zeros((84, 112), bool)
    truth[28:56, 42:84] = True
    seg = segment(vecs, image, geom, SegmentConfig(refine="bilateral"))
    np.testing.assert_array_equal(seg.mask, seg.soft > 0.5)
    assert mask_iou(seg.mask, truth) > 0.99
    masks = [s > 0.5 for s in soft_masks([seg.patch_mask, ~seg.patch_mask], image, geom, LabelConfig(refine="bilateral"))]
    assert mask_iou(masks[0], truth) > 0.99 and mask_iou(masks[1], ~truth) > 0.99


def test_label_config_round_trips_and_keeps_the_default_digest():
    # The default label run's digest from before the solver's options existed (docs/objects.md;
    # with the exact guided filter it used then and the frame rule off).
    old = LabelConfig(guided_subsample=1, frame_area=1.0, frame_border=1.0)
    assert label_digest("ecab1ad5de0a9380", old) == "5b07c6e17324cd2b"
    assert "lam" not in LabelConfig().to_dict()
    cfg = LabelConfig(refine="bilateral", sigma_spatial=8.0, sigma_luma=12.0, sigma_chroma=4.0, lam=64.0)
    back = LabelConfig.from_dict(json.loads(cfg.to_json()))
    assert back == cfg and back.segment_config().lam == 64.0
    assert label_digest("x", cfg) != label_digest("x", LabelConfig(refine="bilateral"))
    with pytest.raises(ValueError, match="label.refine: must be one of"):  # refused when the config is made
        LabelConfig(refine="crf")
