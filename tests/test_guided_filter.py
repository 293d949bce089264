"""kernels.guided_filter: the exact filter against the former float64 SciPy implementation, the
fast (subsampled) filter against the exact one on a real image, resampling, and the label
path that forms block means straight from patch cells."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from kernels.guided_filter import (apply_coefficients, box_mean, constant_tiles, downsample_mean, guide_products,
                                   guided_coefficients, guided_filter, upsample_bilinear)
from pipeline.features.geometry import GridGeometry, grid_to_pixels
from pipeline.objects.masks import SegmentConfig, cell_block_means, refine_guided, refine_guided_cells
from tests.conftest import gpu_available

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


# The implementation this kernel replaced (pipeline/objects/guided_filter.py up to e6869b1):
# float64, SciPy running means, numpy.linalg.solve per pixel, maps stacked on the last axis.
def _ref_box_mean(x, r):
    h, w = x.shape[:2]
    size = 2 * r + 1
    total = ndimage.uniform_filter1d(np.asarray(x, dtype=np.float64), size, axis=0, mode="constant")
    total = ndimage.uniform_filter1d(total, size, axis=1, mode="constant")
    rows = np.minimum(np.arange(h) + r + 1, h) - np.maximum(np.arange(h) - r, 0)
    cols = np.minimum(np.arange(w) + r + 1, w) - np.maximum(np.arange(w) - r, 0)
    return total * (size * size / (rows[:, None] * cols[None, :])).reshape((h, w) + (1,) * (x.ndim - 2))


def _ref_guided_filter(guide, p, r, eps):
    guide, p = np.asarray(guide, np.float64), np.asarray(p, np.float64)
    stacked = p.ndim == 3
    p = p if stacked else p[..., None]
    mean_p = _ref_box_mean(p, r)
    if guide.ndim == 2:
        g = guide[..., None]
        mean_i = _ref_box_mean(guide, r)[..., None]
        a = (_ref_box_mean(g * p, r) - mean_i * mean_p) / (_ref_box_mean(guide * guide, r)[..., None] - mean_i ** 2 + eps)
        q = _ref_box_mean(a, r) * g + _ref_box_mean(mean_p - a * mean_i, r)
        return q if stacked else q[..., 0]
    mean_i = _ref_box_mean(guide, r)
    cov_ip = _ref_box_mean(guide[..., :, None] * p[..., None, :], r) - mean_i[..., :, None] * mean_p[..., None, :]
    sigma = _ref_box_mean(guide[..., :, None] * guide[..., None, :], r) - mean_i[..., :, None] * mean_i[..., None, :]
    a = np.linalg.solve(sigma + eps * np.eye(3), cov_ip)
    b = mean_p - np.einsum("hwcl,hwc->hwl", a, mean_i)
    q = np.einsum("hwcl,hwc->hwl", _ref_box_mean(a, r), guide) + _ref_box_mean(b, r)
    return q if stacked else q[..., 0]


def _photo(size=None) -> np.ndarray:
    image = Image.open(SAMPLES / "chelsea.jpg").convert("RGB")
    return np.asarray(image.resize(size) if size else image)


def _cell_masks(shape, cell, count, seed=0) -> np.ndarray:
    """(count, H, W) {0, 1} masks, blocky as upsampled patch masks are: a smooth random field
    on a grid of `cell`-pixel cells, above its median, nearest-upsampled (cropped to shape)."""
    rng = np.random.default_rng(seed)
    gh, gw = -(-shape[0] // cell), -(-shape[1] // cell)
    fields = ndimage.gaussian_filter(rng.standard_normal((count, gh, gw)), (0, 1.5, 1.5))
    cells = fields > np.median(fields, axis=(1, 2), keepdims=True)
    return cells.repeat(cell, 1).repeat(cell, 2)[:, :shape[0], :shape[1]].astype(np.float64)


def test_box_mean_matches_brute_force_at_the_borders_and_windows_wider_than_the_image():
    rng = np.random.default_rng(0)
    x = rng.random((7, 9))
    for r in (1, 2, 5, 12):
        brute = np.array([[x[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].mean() for j in range(9)]
                          for i in range(7)])
        out = box_mean(x, r)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, brute, atol=1e-6)


@pytest.mark.parametrize("grey", [False, True])
@pytest.mark.parametrize("stacked", [False, True])
def test_exact_filter_equals_the_former_float64_implementation(grey, stacked):
    # A 57 x 83 crop of a photo, radius 8 (windows clipped over a third of it) and radius 40
    # (wider than the image), blocky masks touching every border.
    image = _photo()[100:157, 200:283] / 255.0
    guide = image.mean(-1) if grey else image
    maps = _cell_masks(image.shape[:2], 7, 3)
    p = maps if stacked else maps[0]
    for r, eps in ((8, 1e-3), (40, 1e-2), (2, 1e-3)):
        want = _ref_guided_filter(guide, np.moveaxis(p, 0, -1) if stacked else p, r, eps)
        got = guided_filter(guide, p, r, eps)
        assert got.dtype == np.float32 and got.shape == p.shape
        np.testing.assert_allclose(got, np.moveaxis(want, -1, 0) if stacked else want, atol=1e-5)


def test_exact_filter_on_a_whole_photo_stays_within_1e5_of_float64():
    # float32 over 300 x 451 with radius 16: the box sums are shifted adds of at most 33 terms
    # (a running cumulative sum in float32 was off by 1e-4 here).
    image = _photo() / 255.0
    maps = _cell_masks(image.shape[:2], 20, 2, seed=3)
    want = np.moveaxis(_ref_guided_filter(image, np.moveaxis(maps, 0, -1), 16, 1e-3), -1, 0)
    np.testing.assert_allclose(guided_filter(image, maps, 16, 1e-3), want, atol=1e-5)


def test_downsample_and_upsample_are_block_means_and_bilinear_between_block_centres():
    x = np.arange(7 * 10, dtype=np.float64).reshape(7, 10)
    small = downsample_mean(x, 3)  # 3 x 4 blocks; the last ones repeat the edge row / column
    padded = np.pad(x, ((0, 2), (0, 2)), mode="edge")
    np.testing.assert_allclose(small, padded.reshape(3, 3, 4, 3).mean(axis=(1, 3)), rtol=1e-6)
    # A linear ramp sampled at block centres comes back exactly between the outer centres and
    # constant beyond them.
    ys, xs = np.mgrid[0:3, 0:4]
    ramp = (2.0 * (ys * 3 + 1) + 0.5 * (xs * 3 + 1)).astype(np.float32)  # value at pixel centre (3j + 1)
    up = upsample_bilinear(ramp, 3, (7, 10))
    py, px = np.mgrid[0:7, 0:10]
    want = 2.0 * np.clip(py, 1, 7) + 0.5 * np.clip(px, 1, 10)
    np.testing.assert_allclose(up, want, atol=1e-5)
    for s in (2, 4):  # a constant stays constant at any size
        np.testing.assert_allclose(upsample_bilinear(np.full((2, 3, 4), 0.25), s, (4 * s - 1, 4 * s - 3)), 0.25)


@pytest.mark.parametrize("s", [2, 3, 4, 8])
def test_fast_filter_is_close_to_the_exact_one_on_a_photo(s):
    # chelsea.jpg (300 x 451), 6 random blob masks of 20 px cells (far more edge than an
    # object's mask), r 16, eps 1e-3. Measured mean |fast - exact| 0.0035 / 0.0013 / 0.0101 /
    # 0.0254 and > 0.5 agreement 99.83 / 99.88 / 99.54 / 98.69% at s = 2 / 3 / 4 / 8 (without
    # the guide's full-resolution products: 0.0041 / 0.0039 / 0.0114 / 0.0265 and 99.76 / 99.71
    # / 99.36 / 98.39%); the bounds leave some room. The blocky input agrees on 96.1%.
    image = _photo() / 255.0
    maps = _cell_masks(image.shape[:2], 20, 6, seed=1)
    exact = guided_filter(image, maps, 16, 1e-3)
    fast = guided_filter(image, maps, 16, 1e-3, s)
    bound, agree = {2: (0.005, 0.997), 3: (0.005, 0.997), 4: (0.013, 0.993), 8: (0.03, 0.985)}[s]
    assert fast.shape == exact.shape and fast.dtype == np.float32
    assert np.abs(fast - exact).mean() <= bound
    assert ((fast > 0.5) == (exact > 0.5)).mean() >= agree
    # and it still snaps: closer to the exact filter's masks than the blocky input is
    assert ((fast > 0.5) == (exact > 0.5)).mean() > ((maps > 0.5) == (exact > 0.5)).mean() + 0.02


def test_guide_products_are_block_means_of_centred_full_resolution_products():
    image = (_photo((131, 97)) / 255.0).astype(np.float32)
    planes = np.moveaxis(image, -1, 0).copy()
    centre = downsample_mean(planes, 4).mean(axis=(1, 2))
    g = planes - centre[:, None, None]
    want = [downsample_mean(g[i] * g[j], 4) for i in range(3) for j in range(i, 3)]
    np.testing.assert_allclose(guide_products(planes, 4), np.stack(want), atol=1e-6)
    # variances from them are at least those of the block means (what varies inside a block)
    small = downsample_mean(planes, 4) - centre[:, None, None]
    assert (guide_products(planes, 4)[[0, 3, 5]] >= small ** 2 - 1e-6).all()


def test_full_resolution_step_by_tiles_equals_one_pass():
    image = (_photo((131, 97)) / 255.0).astype(np.float32)
    planes = np.moveaxis(image, -1, 0).copy()
    maps = _cell_masks((97, 131), 9, 3)
    maps[2] = 0  # constant everywhere: no tile to compute
    maps[1, 40:] = 1  # constant over the lower part
    for s in (1, 3):
        r = max(1, 8 // s)
        p = downsample_mean(maps, s)
        a, b = guided_coefficients(downsample_mean(planes, s), p, r, 1e-3)
        up = upsample_bilinear(np.concatenate([a.reshape(-1, *a.shape[2:]), b]), s, (97, 131))
        manual = up[9:] + sum(up[3 * k:3 * k + 3] * planes[k] for k in range(3))
        for tile, batch in ((8, 1 << 40), (8, 1), (3, 5000), (50, 1 << 18)):  # tiles of 8 blocks, 1 per batch, ...
            np.testing.assert_allclose(apply_coefficients(planes, a, b, s, tile=tile, batch_values=batch), manual,
                                       atol=1e-6)
        constant, value = constant_tiles(p, 2 * r + 1, 8)
        assert constant[2].all() and (value[2] == 0).all() and not constant[0].all()
        assert constant[1, -1].all() and (value[1, -1] == 1).all()  # the last tile row lies in the lower part
        # tiles filled with their constant instead of computed: the same within float error
        filled = apply_coefficients(planes, a, b, s, (constant, value), tile=8)
        np.testing.assert_allclose(filled, manual, atol=1e-5)
        np.testing.assert_array_equal(filled[2], 0)


def _geometry() -> GridGeometry:
    # 300 x 451 photo, backbone input 448 long (298 x 448 after the crop to 14 px patches)
    return GridGeometry(grid_h=21, grid_w=32, height=300, width=451, cell_h=14, cell_w=14,
                        scale_y=298 / 300, scale_x=448 / 451)


@pytest.mark.parametrize("s", [1, 3, 4])
def test_block_means_from_cells_equal_those_of_the_upsampled_masks(s):
    geom = _geometry()
    rng = np.random.default_rng(2)
    cells = rng.random((4, 21, 32)) > 0.6
    full = np.stack([grid_to_pixels(c, geom, bilinear=False) for c in cells])
    np.testing.assert_allclose(cell_block_means(cells, geom, s), downsample_mean(full, s), atol=1e-6)


def test_label_refinement_from_cells_equals_the_refiner_of_full_masks():
    geom, image = _geometry(), _photo()
    rng = np.random.default_rng(4)
    cells = ndimage.gaussian_filter(rng.standard_normal((3, 21, 32)), (0, 2, 2)) > 0.2
    full = np.stack([grid_to_pixels(c, geom, bilinear=False) for c in cells])
    for s in (1, 4):
        cfg = SegmentConfig(subsample=s)
        from_cells = refine_guided_cells(image, cells, geom, cfg)
        assert from_cells.dtype == np.float32 and from_cells.shape == (3, 300, 451)
        assert from_cells.min() >= 0 and from_cells.max() <= 1
        np.testing.assert_allclose(from_cells, refine_guided(image, full, cfg), atol=1e-6)
    exact = refine_guided(image, full, SegmentConfig())
    np.testing.assert_allclose(exact, np.clip(guided_filter(image / 255.0, full, 16, 1e-3), 0, 1), atol=1e-5)
    # max_side below the image: the fast filter's block size rises to fit it (451 / 100 -> 5)
    small = refine_guided_cells(image, cells, geom, SegmentConfig(subsample=2, max_side=100))
    np.testing.assert_allclose(small, refine_guided_cells(image, cells, geom, SegmentConfig(subsample=5)), atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")
def test_cupy_equals_numpy():
    import cupy

    image = _photo() / 255.0
    maps = _cell_masks(image.shape[:2], 20, 5, seed=5)
    for guide in (image, image.mean(-1)):
        for s in (1, 4):
            cpu = guided_filter(guide, maps, 16, 1e-3, s)
            gpu = guided_filter(cupy.asarray(guide), cupy.asarray(maps), 16, 1e-3, s)
            assert isinstance(gpu, cupy.ndarray) and gpu.dtype == cupy.float32
            np.testing.assert_allclose(cupy.asnumpy(gpu), cpu, atol=1e-5)
