"""Grid -> pixel geometry, components, fallbacks and boxes from oriented eigenvectors."""

import numpy as np
import pytest

from pipeline.features.backbones import grid_shape, preprocess
from pipeline.features.geometry import GridGeometry, cells_to_box, geometry_of, grid_to_pixels
from pipeline.objects.localize import (LocalizeConfig, components, foreground_mask,
                               largest_component, localize, mask_box)


def row_for(height, width, long_side, patch=14):
    """What the extractor records for an image of this size (via the real preprocess)."""
    crop, _ = preprocess(np.zeros((height, width, 3), np.uint8), patch, long_side)
    gh, gw = grid_shape((height, width), patch, long_side)
    return {"height": height, "width": width, "input_height": crop.shape[0],
            "input_width": crop.shape[1], "grid_h": gh, "grid_w": gw}


def test_geometry_maps_cells_to_original_pixels():
    geom = geometry_of(row_for(100, 200, 448), 448)  # resized 224 x 448, grid 16 x 32, scale 2.24
    assert (geom.grid_h, geom.grid_w, geom.cell_h, geom.cell_w) == (16, 32, 14, 14)
    assert geom.scale_x == geom.scale_y == pytest.approx(2.24)
    np.testing.assert_allclose(cells_to_box(geom, 0, 0, 1, 1), [0, 0, 6.25, 6.25])
    np.testing.assert_allclose(cells_to_box(geom, 2, 3, 16, 32), [18.75, 12.5, 200, 100])


def test_geometry_with_crop_and_uneven_rounding():
    # 101 x 203 -> resized round(101 * 448 / 203) = 223 x 448, cropped to 210 x 448.
    row = row_for(101, 203, 448)
    assert (row["input_height"], row["grid_h"]) == (210, 15)
    geom = geometry_of(row, 448)
    assert geom.scale_y == pytest.approx(223 / 101) and geom.scale_x == pytest.approx(448 / 203)
    full = cells_to_box(geom, 0, 0, 15, 32)
    # The bottom strip the crop removed is outside every box.
    np.testing.assert_allclose(full, [0, 0, 203, 210 / (223 / 101)])
    # Native size ("crop"): scale 1, cells are patches.
    native = geometry_of(row_for(30, 45, None), None)
    np.testing.assert_allclose(cells_to_box(native, 1, 1, 2, 3), [14, 14, 42, 28])


def test_grid_to_pixels_nearest_and_bilinear():
    geom = GridGeometry(grid_h=2, grid_w=2, height=4, width=4, cell_h=2, cell_w=2, scale_y=1, scale_x=1)
    grid = np.array([[0.0, 1.0], [2.0, 3.0]])
    near = grid_to_pixels(grid, geom, bilinear=False)
    np.testing.assert_array_equal(near, np.kron(grid, np.ones((2, 2))))
    bil = grid_to_pixels(grid, geom, bilinear=True)
    np.testing.assert_allclose(bil[0], [0, 0.25, 0.75, 1])  # clamped at the edges
    np.testing.assert_allclose(bil[:, 0], [0, 0.5, 1.5, 2])
    # Cropped-off pixels (image 5 x 5 over a 4 x 4 input) take the last cell.
    geom5 = GridGeometry(2, 2, 5, 5, 2, 2, 1, 1)
    assert grid_to_pixels(grid, geom5, bilinear=False)[4, 4] == 3


def test_largest_component_is_eight_connected():
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True  # a diagonal: one 8-connected component of 3
    mask[4:6, 4:6] = True  # 4 pixels, but ...
    mask[4, 4] = False  # ... now 3: tie broken by the weights
    weights = np.zeros((6, 6))
    weights[5, 5] = 5.0
    parts = components(mask, weights)
    assert [int(p.sum()) for p in parts] == [3, 3]
    assert parts[0][5, 5]  # heavier component first
    mask[3, 3] = True  # joins the diagonal: 4 pixels
    assert largest_component(mask).sum() == 4 and largest_component(mask)[0, 0]
    assert not largest_component(np.zeros((3, 3), bool)).any()


def test_empty_and_full_masks_fall_back_to_the_whole_image():
    vec = np.full((3, 4), -0.5)
    mask, fell_back = foreground_mask(vec, 0.0)  # nothing above 0
    assert fell_back and mask.all()
    mask, fell_back = foreground_mask(np.full((3, 4), 0.5), 0.0)  # everything above 0
    assert fell_back and mask.all()
    mask, fell_back = foreground_mask(np.full((3, 4), 0.5), "mean")  # constant: nothing above mean
    assert fell_back and mask.all()
    geom = GridGeometry(3, 4, 30, 40, 14, 14, 1.4, 1.4)
    vecs = np.stack([np.full((3, 4), 0.3), np.zeros((3, 4))])
    loc = localize(vecs, geom)
    assert loc.fallback
    np.testing.assert_allclose(loc.box, [0, 0, 40, 30])


def test_localize_box_of_the_largest_positive_component():
    geom = GridGeometry(grid_h=8, grid_w=10, height=80, width=100, cell_h=14, cell_w=14, scale_y=1.4, scale_x=1.4)
    fiedler = np.full((8, 10), -0.2)
    fiedler[2:5, 3:7] = 0.5  # the object: rows 2..4, cols 3..6
    fiedler[7, 0] = 0.4  # a speck
    second = np.full((8, 10), -0.1)
    second[0:2, 0:4] = 0.3
    loc = localize(np.stack([np.full((8, 10), 0.1), fiedler, second]), geom, LocalizeConfig(n_vectors=2))
    assert not loc.fallback and loc.mask.sum() == 12
    np.testing.assert_allclose(loc.box, [30, 20, 70, 50])
    np.testing.assert_allclose(mask_box(loc.mask, geom), loc.box)
    assert loc.scores[0] == 1.0 and np.all(np.diff(loc.scores) <= 0)
    np.testing.assert_allclose(loc.boxes[0], loc.box)
    # The second eigenvector's component is a further box, scored below the main one.
    assert any(np.allclose(b, [0, 0, 40, 20]) for b in loc.boxes[1:])
