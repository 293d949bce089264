"""The graph: feature affinity, KNN colour affinity, feature upsampling."""
import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from kernels.knn_affinity import knn_colour_affinity
from pipeline.spectral.affinity import feature_affinity, image_affinity, image_on_grid, upsample_features
from pipeline.config import GraphConfig


@pytest.fixture(scope="module")
def grid_image(sample_image):
    return image_on_grid(sample_image, (30, 45))


def reference_knn_affinity(image, n_neighbors=(20, 10), distance_weights=(2.0, 0.1)):
    """The reference's construction (pymatting's knn affinity) with a k-d tree."""
    h, w = image.shape[:2]
    n = h * w
    r, g, b = image.reshape(-1, 3).T
    x = np.tile(np.linspace(0, 1, w), h)
    y = np.repeat(np.linspace(0, 1, h), w)
    pairs = []
    for k, weight in zip(n_neighbors, distance_weights):
        f = np.stack([r, g, b, weight * x, weight * y], axis=1)
        _, nbrs = cKDTree(f).query(f, k=k)
        pairs.append((np.repeat(np.arange(n), k), nbrs.ravel()))
    return pairs


def test_knn_colour_affinity_matches_reference(grid_image):
    W = knn_colour_affinity(grid_image)
    n = grid_image.shape[0] * grid_image.shape[1]
    assert W.shape == (n, n)
    assert abs(W - W.T).max() == 0
    assert W.sum() == 2 * (20 + 10) * n  # every directed edge counted twice (i->j and j->i)
    expected = np.zeros((n, n))
    for rows, cols in reference_knn_affinity(grid_image):
        np.add.at(expected, (rows, cols), 1)
        np.add.at(expected, (cols, rows), 1)
    # float32 vs float64 distances may break near-ties differently: allow a handful.
    mismatched = np.abs(W.toarray() - expected).sum() / expected.sum()
    assert mismatched < 0.01


def test_feature_affinity_is_clipped_cosine():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(50, 8))
    W = feature_affinity(f.reshape(5, 10, 8))
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    np.testing.assert_allclose(W, np.maximum(fn @ fn.T, 0), atol=1e-6)
    assert W.dtype == np.float32 and (W >= 0).all() and np.allclose(np.diag(W), 1)
    assert (W == 0).any()  # random features have negative cosines, clipped


def test_topk_sparsification_is_symmetric_and_keeps_top_entries():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(6, 10, 8))
    dense = feature_affinity(f)
    W = feature_affinity(f, topk=5).toarray()
    np.testing.assert_array_equal(W, W.T)
    for i in range(60):
        top = np.argsort(-dense[i])[:5]
        np.testing.assert_allclose(W[i, top], dense[i, top], rtol=1e-6)  # float32 Gram: G_ij ≈ G_ji
    assert np.abs(W[W > 0] - dense[W > 0]).max() < 1e-6


def test_relative_knn_weight_matches_feature_graph_mass(sample_image):
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(12, 16, 8)) + 2.0
    W_feat = feature_affinity(feats)
    W = image_affinity(feats, sample_image, GraphConfig(knn_lambda=0.5))
    np.testing.assert_allclose((W - W_feat).sum(), 0.5 * W_feat.sum(), rtol=1e-9)
    W_abs = image_affinity(feats, sample_image, GraphConfig(knn_lambda=10, knn_scale="absolute"))
    np.testing.assert_allclose((W_abs - W_feat).sum(), 10 * 2 * 30 * 12 * 16)


def test_upsample_matches_torch_bilinear():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(5, 7, 4)).astype(np.float32)
    ours = upsample_features(f, 2)
    t = torch.nn.functional.interpolate(
        torch.from_numpy(f).permute(2, 0, 1)[None], scale_factor=2, mode="bilinear", align_corners=False
    )[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, t, atol=1e-6)


def test_upsampled_graph_equals_graph_of_upsampled_features():
    rng = np.random.default_rng(4)
    f = rng.normal(size=(6, 9, 16)).astype(np.float32) + 0.5
    direct = upsample_features(f, 2)
    fn = direct.reshape(-1, 16) / np.linalg.norm(direct.reshape(-1, 16), axis=1, keepdims=True)
    np.testing.assert_allclose(feature_affinity(f, upsample=2), np.maximum(fn @ fn.T, 0), atol=2e-6)
