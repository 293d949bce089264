"""Large-grid path: the blocked top-k graph builder and the components-first sparse eigensolve,
against the dense graph and dense eigh, on graphs of real photographs (samples/).

The photos' graphs are W = max(f f^T, 0) over L2-normalised 8x8-patch descriptors
(tests/pixel_graphs.py), sparsified to each node's top-k; with small k and several photos side
by side they fall apart into components, the case single-vector ARPACK got wrong.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import gpu_available
import scipy.linalg
import scipy.sparse

from tests.pixel_graphs import image_descriptors
from kernels import normalized_laplacian, smallest_eigenpairs, to_numpy
from kernels.components import component_labels
from kernels.knn_affinity import brute_nearest_neighbors, tree_nearest_neighbors
from kernels.topk_affinity import topk_cosine_graph
from pipeline.spectral.affinity import feature_affinity, sparse_feature_affinity, topk_graph

K = 15
TOL = 1e-5


def dense_eigh(W, k=K + 1):
    L, _ = normalized_laplacian(to_numpy(W).toarray().astype(np.float64))
    return scipy.linalg.eigh(L, subset_by_index=[0, k - 1])


def l_space(pairs, W):
    """Generalised eigenvectors (N, k) -> orthonormal eigenvectors of L (N, k)."""
    W = to_numpy(W)
    d = np.asarray(W.sum(axis=1)).ravel()
    v = np.sqrt(d)[:, None] * to_numpy(pairs.eigenvectors)
    return v / np.linalg.norm(v, axis=0)


def assert_subspaces_match(pairs, W, ref_vals, ref_vecs, k=K):
    """Eigenvalues to TOL, and every invariant subspace that a gap separates to Davis-Kahan
    (within a cluster only the cluster's span is determined)."""
    vals = to_numpy(pairs.eigenvalues)
    np.testing.assert_allclose(vals, ref_vals[:k], rtol=0, atol=TOL)
    V = l_space(pairs, W)
    # Orthonormal to the solver's tolerance: Lanczos vectors converged to residual TOL are
    # orthogonal to about TOL / gap (1.5e-6 seen once under load, against 1e-6 asked before).
    np.testing.assert_allclose(V.T @ V, np.eye(k), atol=TOL)
    for j in range(1, k + 1):
        gap = ref_vals[j] - ref_vals[j - 1]
        if gap < 1e-3:
            continue
        basis, _ = np.linalg.qr(V[:, :j])
        ref = ref_vecs[:, :j]
        sin_max = np.linalg.norm(ref - basis @ (basis.T @ ref), 2)
        assert sin_max <= 2 * np.sqrt(j) * max(pairs.max_residual, 1e-7) / gap + 1e-6, (j, gap, sin_max)


# ------------------------------------------------------------------------- graph builder

@pytest.mark.parametrize("k", (5, 10))
def test_topk_graph_equals_sparsified_dense_graph(k):
    f = image_descriptors("coffee", 700)
    dense = topk_graph(np.maximum(f @ f.T, 0.0).astype(np.float32), k)
    # A small block budget forces many row blocks: the blocking must not change the graph.
    W = topk_cosine_graph(f, k, budget=50 * f.shape[0])
    assert scipy.sparse.issparse(W) and W.dtype == np.float32
    assert abs(W - W.T).max() == 0
    np.testing.assert_allclose(W.toarray(), dense.toarray(), atol=1e-6)
    assert W.nnz <= 2 * k * f.shape[0]
    # Each row holds at least its own k strongest links.
    assert (np.diff(W.indptr) >= k).all()


def test_sparse_feature_affinity_equals_dense_builder_upsampled():
    """pipeline.spectral.affinity's sparse builder, upsampled 2x: the graph of the dense builder."""
    f = image_descriptors("chelsea", 300)
    gh, gw = 14, 20  # rows of the grid reshaped: any (gh, gw, C) field will do
    features = f[: gh * gw].reshape(gh, gw, -1).astype(np.float32)
    for upsample in (1, 2):
        dense = feature_affinity(features, upsample, topk=8)
        W = sparse_feature_affinity(features, upsample, topk=8)
        assert W.shape == (gh * gw * upsample**2,) * 2
        np.testing.assert_allclose(W.toarray(), dense.toarray(), atol=2e-5)


def test_colour_neighbours_blocked_equal_unblocked():
    rng = np.random.default_rng(0)
    points = rng.random((500, 5)).astype(np.float32)
    np.testing.assert_array_equal(brute_nearest_neighbors(points, 7, chunk=13), brute_nearest_neighbors(points, 7, chunk=500))


def test_colour_neighbours_tree_equals_brute_force():
    # Continuous random points have no equidistant neighbours, so the order is the same too.
    points = np.random.default_rng(1).random((3000, 5))
    np.testing.assert_array_equal(tree_nearest_neighbors(points, 10), brute_nearest_neighbors(points, 10))


def test_topk_bad_input():
    with pytest.raises(ValueError):
        topk_cosine_graph(np.ones((4, 3, 2)), 3)
    with pytest.raises(ValueError):
        topk_cosine_graph(np.ones((4, 3)), 0)


# --------------------------------------------------------------------------- eigensolve

@pytest.mark.parametrize("name", ("astronaut", "rocket"))
def test_auto_on_knn_graph_of_photo_matches_dense_eigh(name):
    W = topk_cosine_graph(image_descriptors(name, 2800), 10)
    assert component_labels(W)[0] == 1
    pairs = smallest_eigenpairs(W, K)
    assert pairs.method == "lanczos" and pairs.fallback_from is None and pairs.max_residual <= TOL
    assert_subspaces_match(pairs, W, *dense_eigh(W))


def photos_in_pieces():
    """Three photos' KNN graphs side by side plus a 3-node clique, a self-loop node and two
    isolated nodes: 0 with multiplicity 5, then interleaved eigenvalues of the pieces."""
    parts = [topk_cosine_graph(image_descriptors(name, n), 5)
             for name, n in (("coffee", 900), ("rocket", 1200), ("chelsea", 400))]
    extra = [scipy.sparse.csr_matrix(np.ones((3, 3))), scipy.sparse.csr_matrix(np.eye(1)),
             scipy.sparse.csr_matrix((2, 2))]
    return scipy.sparse.block_diag(parts + extra, format="csr")


@pytest.mark.parametrize("method", ("auto", "lanczos", "krylov", "shift_invert"))
def test_graph_in_components_matches_dense_eigh(method):
    W = photos_in_pieces()
    count, _ = component_labels(W)
    ref_vals, ref_vecs = dense_eigh(W)
    zeros = int(np.sum(ref_vals < 1e-9))
    assert count >= 7 and zeros >= 5  # the photos' own graphs may split further at k = 5
    pairs = smallest_eigenpairs(W, K, method=method)
    assert pairs.fallback_from is None
    vals = to_numpy(pairs.eigenvalues)
    assert np.all(vals[:zeros] == 0) and vals[zeros] > 1e-6
    assert_subspaces_match(pairs, W, ref_vals, ref_vecs)
    # Column 0 is the constant vector; the other zeros are orthogonal to it in D's metric.
    x = to_numpy(pairs.eigenvectors)
    assert np.all(x[:, 0] == 1 / np.sqrt(W.shape[0]))
    d = np.asarray(W.sum(axis=1)).ravel()
    np.testing.assert_allclose((d[:, None] * x[:, :zeros]).T @ x[:, 0], [x[:, 0] @ (d * x[:, 0])] + [0] * (zeros - 1), atol=1e-10)


def test_isolated_nodes_keep_eigenvalue_one_when_asked_for_all():
    """k = N on a small graph in pieces: every eigenvalue, the isolated nodes' 1s included."""
    W = scipy.sparse.block_diag([topk_cosine_graph(image_descriptors("coffee", 150), 4),
                                 scipy.sparse.csr_matrix((3, 3))], format="csr")
    n = W.shape[0]
    L, _ = normalized_laplacian(W.toarray().astype(np.float64))
    ref = scipy.linalg.eigvalsh(L)
    pairs = smallest_eigenpairs(W, n, method="lanczos")
    np.testing.assert_allclose(pairs.eigenvalues, np.clip(ref, 0, None), atol=1e-8)


# ---------------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU (the CPU path is tested above)")
class TestCuPy:
    def test_cupy_topk_graph_matches_numpy(self):
        import cupy

        f = image_descriptors("coffee", 700)
        W = topk_cosine_graph(cupy.asarray(f), 10)
        np.testing.assert_allclose(W.get().toarray(), topk_cosine_graph(f, 10).toarray(), atol=1e-5)

    def test_cupy_components_match_dense_eigh(self):
        import cupyx.scipy.sparse

        W = photos_in_pieces()
        pairs = smallest_eigenpairs(cupyx.scipy.sparse.csr_matrix(W), K)
        assert_subspaces_match(pairs, W, *dense_eigh(W))

    def test_cupy_auto_on_knn_graph(self):
        import cupy

        f = image_descriptors("astronaut", 2800)
        W = topk_cosine_graph(cupy.asarray(f), 10)
        pairs = smallest_eigenpairs(W, K)
        assert_subspaces_match(pairs, W.get(), *dense_eigh(W.get()))


# ------------------------------------------------------------------------------- config

def test_graph_kind_leaves_default_digest_alone():
    """`kind` joined GraphConfig after shards were written: at "dense" it is not in the JSON,
    so default runs keep their digest (and shards); "sparse" is recorded and round-trips."""
    import json

    from pipeline.config import ExtractConfig, GraphConfig

    default = ExtractConfig()
    assert "kind" not in json.loads(default.to_json())["graph"]
    assert ExtractConfig.from_dict(json.loads(default.to_json())) == default
    sparse = ExtractConfig(graph=GraphConfig(kind="sparse", sparsify_topk=10))
    assert json.loads(sparse.to_json())["graph"]["kind"] == "sparse"
    assert sparse.digest() != default.digest()
    assert ExtractConfig.from_dict(json.loads(sparse.to_json())) == sparse
