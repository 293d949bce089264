"""kernels.eigensolver against dense eigh, on affinity graphs of real photographs.

Two kinds of graph: the pipeline's own (offline ViT features of the sample photos through
pipeline.spectral.affinity, at the default grid and upsampled 2x), and, for the many method/edge-case
tests that need no model, W = max(f f^T, 0) over L2-normalised pixel descriptors of the same
photos (each 8x8 RGB patch, mean-centred over the image, plus its grid position).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import gpu_available
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
from PIL import Image

from tests import pixel_graphs
from kernels import (Eigenpairs, array_module, normalized_laplacian, scipy_module,
                     smallest_eigenpairs, to_numpy)
from kernels.eigensolver import DENSE_MAX_N
from pipeline.spectral.affinity import topk_graph

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
IMAGES = ("astronaut", "chelsea", "coffee", "rocket")
K = 15
TOL = 1e-5


# ----------------------------------------------------------------------------------- graphs

image_graph = lru_cache(maxsize=None)(pixel_graphs.image_graph)


def graph(name: str, n: int):
    """(cache key, dense W) of samples/<name>.jpg at ~n nodes."""
    return (name, n), image_graph(name, n)


_REFERENCES: dict = {}


def dense_reference(key, W):
    """(eigenvalues (K+1,), eigenvectors (N, K+1)) of L by dense eigh, cached under `key`.

    One pair more than asked, so that the gap after the last one is known.
    """
    if key not in _REFERENCES:
        L, _ = normalized_laplacian(W.toarray() if scipy.sparse.issparse(W) else W)
        _REFERENCES[key] = scipy.linalg.eigh(L, subset_by_index=[0, K])
    return _REFERENCES[key]


# ------------------------------------------------------------------------------- checks

def l_space(pairs: Eigenpairs, W) -> np.ndarray:
    """Generalised eigenvectors x (N, k) back to orthonormal eigenvectors v of L (N, k)."""
    d = np.asarray(to_numpy(W).sum(axis=1)).ravel()
    v = np.sqrt(d)[:, None] * to_numpy(pairs.eigenvectors)
    return v / np.linalg.norm(v, axis=0)


def assert_matches_dense(pairs: Eigenpairs, W, ref_vals, ref_vecs, k=K):
    """Eigenvalues to TOL; every invariant subspace the spectrum separates, to Davis-Kahan."""
    vals = to_numpy(pairs.eigenvalues)
    assert vals.shape == (k,) and to_numpy(pairs.eigenvectors).shape == (W.shape[0], k)
    assert np.all(np.isfinite(vals)) and np.all(np.isfinite(to_numpy(pairs.eigenvectors)))
    np.testing.assert_allclose(vals, ref_vals[:k], rtol=0, atol=TOL)
    V = l_space(pairs, W)
    for j in range(1, k + 1):
        gap = ref_vals[j] - ref_vals[j - 1]
        if gap < 1e-3:  # a cluster: only the subspace around it is determined
            continue
        # ||P - P_ref||_2 = sin of the largest principal angle <= ||R||_F / gap (Davis-Kahan),
        # = ||(I - P) V_ref||_2 with P onto an orthonormal basis of ours (QR: float32-iterated
        # vectors are orthogonal only to ~1e-7); accurate for small angles, unlike 1 - cos^2.
        basis, _ = np.linalg.qr(V[:, :j])
        ref = ref_vecs[:, :j]
        sin_max = np.linalg.norm(ref - basis @ (basis.T @ ref), 2)
        bound = 2 * np.sqrt(j) * max(pairs.max_residual, 1e-7) / gap + 1e-6
        assert sin_max <= bound, (j, gap, sin_max, bound)


def generalized_residual(pairs: Eigenpairs, W) -> float:
    """max_j ||(D - W) x_j - lambda_j D x_j|| / ||D x_j||: the reference's own equation."""
    W = to_numpy(W)
    d = np.asarray(W.sum(axis=1)).ravel()
    x, lam = to_numpy(pairs.eigenvectors), to_numpy(pairs.eigenvalues)
    r = d[:, None] * x - W @ x - lam[None, :] * d[:, None] * x
    return float((np.linalg.norm(r, axis=0) / np.linalg.norm(d[:, None] * x, axis=0)).max())


# -------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("name", IMAGES)
def test_auto_matches_dense_eigh_n700(name):
    key, W = graph(name, 700)
    pairs = smallest_eigenpairs(W, K)
    assert pairs.method == "krylov" and pairs.fallback_from is None
    assert pairs.max_residual <= TOL
    assert_matches_dense(pairs, W, *dense_reference(key, W))


@pytest.mark.parametrize("name", ("astronaut", "coffee"))
def test_auto_matches_dense_eigh_n2800(name):
    key, W = graph(name, 2800)
    assert W.shape[0] > 2700
    pairs = smallest_eigenpairs(W, K)
    assert pairs.method == "krylov" and pairs.fallback_from is None
    assert_matches_dense(pairs, W, *dense_reference(key, W))


def test_solves_the_reference_generalized_problem():
    """Same eigenvalues and eigenvectors as eigsh(D - W, k, sigma=0, M=D)."""
    key, W = graph("coffee", 700)
    D = np.diag(W.sum(axis=1))
    ref_vals, ref_x = scipy.sparse.linalg.eigsh(D - W, K, sigma=0, which="LM", M=D)
    order = np.argsort(ref_vals)
    ref_vals, ref_x = ref_vals[order], ref_x[:, order]
    pairs = smallest_eigenpairs(W, K)
    np.testing.assert_allclose(pairs.eigenvalues, ref_vals, atol=TOL)
    assert generalized_residual(pairs, W) < 1e-4
    # The Fiedler vector is well separated on this image: same vector up to sign.
    fiedler = ref_x[:, 1] / np.linalg.norm(ref_x[:, 1])
    assert abs(fiedler @ pairs.eigenvectors[:, 1]) > 1 - 1e-6


@pytest.mark.parametrize("method", ("dense", "krylov", "lanczos", "lobpcg"))
def test_each_method_gives_the_same_result(method):
    key, W = graph("chelsea", 700)
    pairs = smallest_eigenpairs(W, K, method=method)
    if method in ("dense", "krylov", "lanczos"):
        assert pairs.method == method
    else:  # LOBPCG may stop just short of tol and fall back; either way the answer is right
        assert pairs.method in (method, "dense")
    assert_matches_dense(pairs, W, *dense_reference(key, W))
    assert generalized_residual(pairs, W) < 1e-4


@pytest.mark.parametrize("method", ("auto", "shift_invert"))
def test_sparse_graph_shift_invert_and_auto(method):
    """auto on sparse W = components first, then Lanczos (tests/test_sparse_eigensolve.py)."""
    key, W = graph("astronaut", 2800)
    S = topk_graph(W, 10)
    ref = dense_reference(("astronaut-knn10", 2800), S)
    pairs = smallest_eigenpairs(S, K, method=method)
    assert pairs.method == ("lanczos" if method == "auto" else method) and pairs.fallback_from is None
    assert_matches_dense(pairs, S, *ref)


def test_constant_vector_first():
    key, W = graph("rocket", 700)
    for method in ("dense", "krylov"):
        pairs = smallest_eigenpairs(W, K, method=method)
        assert pairs.eigenvalues[0] == 0.0
        assert np.all(pairs.eigenvectors[:, 0] == 1.0 / np.sqrt(W.shape[0]))
        assert np.all(np.diff(pairs.eigenvalues) >= 0)
        np.testing.assert_allclose(np.linalg.norm(pairs.eigenvectors, axis=0), 1.0, atol=1e-12)


@pytest.mark.parametrize("method", ("dense", "krylov", "lanczos", "lobpcg"))
def test_isolated_node(method):
    """A zero row: no crash, no NaN; it keeps L's eigenvalue 1, out of the smallest k."""
    _, W0 = graph("coffee", 700)
    W = W0.copy()
    W[5, :] = W[:, 5] = 0.0
    ref_vals, ref_vecs = dense_reference(("coffee-isolated", 700), W)
    L, d = normalized_laplacian(W)
    assert d[5] == 0 and L[5, 5] == 1.0 and np.count_nonzero(L[5]) == 1
    pairs = smallest_eigenpairs(W, K, method=method)
    assert np.isfinite(pairs.eigenvectors).all()
    np.testing.assert_allclose(pairs.eigenvalues, ref_vals[:K], atol=TOL)
    assert pairs.eigenvectors[5, 0] == 1.0 / np.sqrt(W.shape[0])
    # Exactly 0 in exact arithmetic; iterative methods leave residual-level noise there.
    np.testing.assert_allclose(pairs.eigenvectors[5, 1:], 0.0, atol=1e-4)


@pytest.mark.parametrize("method", ("dense", "krylov", "shift_invert"))
def test_disconnected_graph_two_zero_eigenvalues(method):
    """Two components: eigenvalue 0 twice, and x_0, x_1 span the two indicator vectors."""
    _, A = graph("coffee", 300)
    _, B = graph("rocket", 450)
    W = scipy.linalg.block_diag(A, B)
    if method == "shift_invert":
        W = scipy.sparse.csr_matrix(W)
    n = W.shape[0]
    assert n > DENSE_MAX_N  # so that "auto" would not pick dense
    pairs = smallest_eigenpairs(W, K, method=method)
    assert pairs.method == method
    vals = pairs.eigenvalues
    assert vals[0] == 0 and vals[1] < 1e-6 and vals[2] > 1e-2
    indicators = np.zeros((n, 2))
    indicators[: A.shape[0], 0] = indicators[A.shape[0]:, 1] = 1.0
    Q, _ = np.linalg.qr(pairs.eigenvectors[:, :2])
    np.testing.assert_allclose(Q @ (Q.T @ indicators), indicators, atol=1e-5)
    key = ("coffee+rocket", n)
    ref_vals, ref_vecs = dense_reference(key, W)
    # The two-fold 0 is a cluster: assert_matches_dense compares the subspaces around it.
    assert_matches_dense(pairs, W, ref_vals, ref_vecs)


@pytest.mark.parametrize("method", ("krylov", "lanczos", "lobpcg"))
def test_residual_check_falls_back_to_dense(method):
    key, W = graph("astronaut", 700)
    pairs = smallest_eigenpairs(W, K, method=method, maxiter=1)
    assert pairs.method == "dense" and pairs.fallback_from == method
    assert pairs.max_residual < 1e-12
    assert_matches_dense(pairs, W, *dense_reference(key, W))


def test_without_fallback_the_unconverged_result_is_returned():
    _, W = graph("astronaut", 700)
    pairs = smallest_eigenpairs(W, K, method="krylov", maxiter=2, fallback=False)
    assert pairs.method == "krylov" and pairs.max_residual > TOL


def test_block_krylov_thick_restarts():
    """A basis capped at 4 blocks forces restarts; the answer must not change."""
    from kernels.eigensolver import _operator, _start_block, largest_eigenpairs_block_krylov
    from kernels.laplacian import degrees, inverse_sqrt_degrees

    key, W = graph("rocket", 700)
    d = degrees(W)
    v0 = np.sqrt(d) / np.linalg.norm(np.sqrt(d))
    apply = _operator(W, inverse_sqrt_degrees(d), np.float64)
    start = _start_block(W.shape[0], K + 1, 0, v0, np.float64)
    theta, V, res = largest_eigenpairs_block_krylov(apply, start, K - 1, deflate=v0[:, None],
                                                    tol=1e-8, max_dim=4 * (K + 1))
    assert res.max() <= 1e-8
    ref_vals, _ = dense_reference(key, W)
    np.testing.assert_allclose(1.0 - theta, ref_vals[1:K], atol=1e-10)
    np.testing.assert_allclose(V.T @ V, np.eye(K - 1), atol=1e-10)
    np.testing.assert_allclose(V.T @ v0, 0.0, atol=1e-10)


def test_deterministic():
    _, W = graph("chelsea", 700)
    a = smallest_eigenpairs(W, K)
    b = smallest_eigenpairs(W, K)
    assert np.array_equal(a.eigenvalues, b.eigenvalues)
    assert np.array_equal(a.eigenvectors, b.eigenvectors)
    # Another seed: another start, same answer to tolerance (and the same signs).
    c = smallest_eigenpairs(W, K, seed=1)
    np.testing.assert_allclose(c.eigenvalues, a.eigenvalues, atol=TOL)
    np.testing.assert_allclose(c.eigenvectors[:, :4], a.eigenvectors[:, :4], atol=1e-3)


def test_tight_tolerance_iterates_in_float64():
    key, W = graph("coffee", 700)
    pairs = smallest_eigenpairs(W, K, method="krylov", tol=1e-9)
    assert pairs.method == "krylov" and pairs.max_residual <= 1e-9
    ref_vals, _ = dense_reference(key, W)
    np.testing.assert_allclose(pairs.eigenvalues, ref_vals[:K], atol=1e-12)


@pytest.mark.parametrize("n", (20, 150))
@pytest.mark.parametrize("method", ("auto", "krylov"))
def test_small_graphs_and_k_up_to_n(n, method):
    W = image_graph("chelsea", 300)[:n, :n]
    L, _ = normalized_laplacian(W)
    ref = scipy.linalg.eigvalsh(L)
    for k in (1, 2, min(K, n), n):
        pairs = smallest_eigenpairs(W, k, method=method)
        np.testing.assert_allclose(pairs.eigenvalues, ref[:k], atol=TOL)
        assert pairs.eigenvectors.shape == (n, k)


def test_float32_input():
    key, W = graph("rocket", 700)
    pairs = smallest_eigenpairs(W.astype(np.float32), K)
    assert pairs.eigenvectors.dtype == np.float64 and pairs.method == "krylov"
    np.testing.assert_allclose(pairs.eigenvalues, dense_reference(key, W)[0][:K], atol=TOL)


def test_bad_inputs():
    W = image_graph("chelsea", 300)[:50, :50]
    with pytest.raises(ValueError):
        smallest_eigenpairs(W, 0)
    with pytest.raises(ValueError):
        smallest_eigenpairs(W, 51)
    with pytest.raises(ValueError):
        smallest_eigenpairs(W, 5, method="arnoldi")
    with pytest.raises(ValueError):
        smallest_eigenpairs(np.zeros((10, 10)), 3)
    bad = W.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError):
        smallest_eigenpairs(bad, 3)
    with pytest.raises(ValueError):
        smallest_eigenpairs(W, 3, method="shift_invert")  # needs sparse W


def test_normalized_laplacian_dense_and_sparse_agree():
    W = image_graph("coffee", 300)[:120, :120].copy()
    W[7, :] = W[:, 7] = 0.0
    L, d = normalized_laplacian(W)
    Ls, ds = normalized_laplacian(scipy.sparse.csr_matrix(W))
    assert scipy.sparse.issparse(Ls)
    np.testing.assert_allclose(Ls.toarray(), L, atol=1e-15)
    np.testing.assert_allclose(ds, d, rtol=1e-15)
    np.testing.assert_array_equal(L[7], np.eye(120)[7])
    np.testing.assert_allclose(L, L.T, atol=1e-15)
    assert abs(scipy.linalg.eigvalsh(L)[0]) < 1e-12


def test_backend_on_numpy():
    x = np.ones(3)
    assert array_module(x) is np
    assert scipy_module(x) is scipy
    assert to_numpy(x) is x
    assert array_module(scipy.sparse.eye(3, format="csr")) is np


# ---------------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU (CPU path tested above)")
class TestCuPy:
    @pytest.mark.parametrize("method", ("auto", "dense", "krylov", "lanczos", "lobpcg"))
    def test_cupy_matches_numpy(self, method):
        import cupy

        key, W = graph("coffee", 700)
        gpu = smallest_eigenpairs(cupy.asarray(W), K, method=method)
        assert isinstance(gpu.eigenvalues, cupy.ndarray) and isinstance(gpu.eigenvectors, cupy.ndarray)
        cpu = smallest_eigenpairs(W, K, method=method)
        np.testing.assert_allclose(to_numpy(gpu.eigenvalues), cpu.eigenvalues, atol=TOL)
        assert_matches_dense(gpu, W, *dense_reference(key, W))
        # Well-separated leading vectors agree entry-wise, signs included.
        np.testing.assert_allclose(to_numpy(gpu.eigenvectors[:, :3]), cpu.eigenvectors[:, :3], atol=1e-4)

    def test_cupy_sparse_auto(self):
        import cupyx.scipy.sparse

        key, W = graph("astronaut", 2800)
        S = topk_graph(W, 10)
        gpu = smallest_eigenpairs(cupyx.scipy.sparse.csr_matrix(S), K)
        assert gpu.method == "lanczos"
        assert_matches_dense(gpu, S, *dense_reference(("astronaut-knn10", 2800), S))

    def test_cupy_fallback(self):
        import cupy

        key, W = graph("astronaut", 700)
        pairs = smallest_eigenpairs(cupy.asarray(W), K, method="krylov", maxiter=1)
        assert pairs.method == "dense" and pairs.fallback_from == "krylov"
        assert_matches_dense(pairs, W, *dense_reference(key, W))


# ------------------------------------------------------------- the pipeline's own ViT graphs

@pytest.fixture(scope="module")
def vit_graphs(offline_weights):
    """{(name, upsample): float32 W} from the offline backbone's features at long side 448."""
    from pipeline.spectral.affinity import feature_affinity
    from pipeline.features.backbones import create_backbone

    backbone = create_backbone("dinov2_vits14_offline", weights=str(offline_weights), resize=448)
    graphs = {}
    for name in ("astronaut", "coffee"):
        image = np.asarray(Image.open(SAMPLES / f"{name}.jpg").convert("RGB"))
        features = backbone([image])[0].features
        for upsample in (1, 2):
            graphs[(name, upsample)] = feature_affinity(features, upsample)
    return graphs


@pytest.mark.parametrize("upsample", [1, 2])
@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_auto_matches_dense_eigh_on_vit_graphs(vit_graphs, name, upsample):
    W = vit_graphs[(name, upsample)]
    assert 600 <= W.shape[0] / upsample**2 <= 1100
    ref_vals, ref_vecs = dense_reference(("vit", name, upsample), W.astype(np.float64))
    pairs = smallest_eigenpairs(W, K)
    assert pairs.method == "krylov" and pairs.fallback_from is None
    assert_matches_dense(pairs, W.astype(np.float64), ref_vals, ref_vecs)
