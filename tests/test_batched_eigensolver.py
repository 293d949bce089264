"""kernels.batched_eigensolver against the per-image solver, on the pipeline's own ViT graphs.

Graphs: W = max(f̂ f̂ᵀ, 0) (pipeline.spectral.affinity.feature_affinity) from the offline
backbone's features of the sample photos and a few ECSSD images (when the benchmark data is there),
resized to different long sides so that the batch mixes sizes (N ~ 350..1,024), plus one
graph small enough (N <= DENSE_MAX_N) for the per-image dense route. Features are computed
once per module (~5-20 s on this CPU).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kernels import smallest_eigenpairs, to_numpy
from kernels.batched_eigensolver import METHOD, BatchedEigenpairs, smallest_eigenpairs_batched
from kernels.eigensolver import DENSE_MAX_N
from pipeline.spectral.spectrum import border_mask, grid_stack, orient_by_border, orient_by_border_batched
from tests.conftest import SHARED_DATA, gpu_available
from tests.test_eigensolver import assert_matches_dense, dense_reference

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
K = 15
TOL = 1e-5
FIEDLER_DEGREES = 0.01
# (image, long side): sizes spread over the pipeline's range; the last one is small (dense).
SAMPLE_GRAPHS = (("astronaut", 448), ("coffee", 448), ("chelsea", 392), ("rocket", 336))
ECSSD_GRAPHS = (("0001", 476), ("0002", 420), ("0003", 364), ("0004", 182))


def _load(path: Path, long_side: int) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    scale = long_side / max(image.size)
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    return np.asarray(image.resize(size, Image.BICUBIC))


@pytest.fixture(scope="module")
def vit_graphs(offline_weights):
    """[(name, float32 W (n, n), (h, w))] in mixed sizes, from the offline backbone."""
    from pipeline.features.backbones import create_backbone
    from pipeline.spectral.affinity import feature_affinity

    items = [(f"{name}@{side}", SAMPLES / f"{name}.jpg", side) for name, side in SAMPLE_GRAPHS]
    ecssd = SHARED_DATA / "ecssd" / "images"
    if ecssd.exists():
        items += [(f"ecssd{name}@{side}", ecssd / f"{name}.jpg", side) for name, side in ECSSD_GRAPHS]
    else:  # still one small graph for the dense route
        items.append(("rocket@182", SAMPLES / "rocket.jpg", 182))
    backbone = create_backbone("dinov2_vits14_offline", weights=str(offline_weights), resize="crop")
    graphs = []
    for name, path, side in items:
        features = backbone([_load(path, side)])[0].features
        graphs.append((name, feature_affinity(features), features.shape[:2]))
    sizes = [W.shape[0] for _, W, _ in graphs]
    assert min(sizes) <= DENSE_MAX_N and max(sizes) >= 1000 and len(set(sizes)) >= 5, sizes
    return graphs


def padded(graphs, N=None, xp=np, dtype=np.float32):
    """[W_i (n_i, n_i)] -> zero-padded (B, N, N) stack and sizes (B,)."""
    sizes = np.array([W.shape[0] for W in graphs])
    stack = np.zeros((len(graphs), N or sizes.max(), N or sizes.max()), dtype)
    for i, W in enumerate(graphs):
        stack[i, :W.shape[0], :W.shape[0]] = W
    return xp.asarray(stack), sizes


@pytest.fixture(scope="module")
def per_image(vit_graphs):
    return [smallest_eigenpairs(W, K) for _, W, _ in vit_graphs]


@pytest.fixture(scope="module")
def batched(vit_graphs):
    stack, sizes = padded([W for _, W, _ in vit_graphs])
    return smallest_eigenpairs_batched(stack, K, sizes=sizes)


def fiedler_degrees(x, y) -> float:
    return float(np.degrees(np.arccos(min(1.0, abs(float(x @ y))))))


def assert_same_pairs(out: BatchedEigenpairs, graphs, reference, fiedler=FIEDLER_DEGREES):
    """Each image of `out` against the per-image Eigenpairs: eigenvalues to TOL, the Fiedler
    vector to `fiedler` degrees, column 0 exactly, padding rows exactly 0."""
    vals, vecs = to_numpy(out.eigenvalues), to_numpy(out.eigenvectors)
    assert vals.shape == (len(graphs), K) and vecs.shape[::2] == (len(graphs), K)
    for i, (W, ref) in enumerate(zip(graphs, reference)):
        n = W.shape[0]
        assert out.sizes[i] == n
        np.testing.assert_allclose(vals[i], to_numpy(ref.eigenvalues), rtol=0, atol=TOL)
        x = vecs[i, :n]
        assert fiedler_degrees(x[:, 1], to_numpy(ref.eigenvectors)[:, 1]) <= fiedler
        assert np.array_equal(x[:, 0], np.full(n, 1.0 / np.sqrt(n)))
        np.testing.assert_allclose(np.linalg.norm(x, axis=0), 1.0, atol=1e-12)
        assert np.all(vecs[i, n:] == 0.0), "padding rows must be exactly 0"
        assert out.max_residuals[i] <= TOL


# -------------------------------------------------------------------------------- tests

def test_mixed_sizes_match_per_image(vit_graphs, per_image, batched):
    graphs = [W for _, W, _ in vit_graphs]
    assert_same_pairs(batched, graphs, per_image)
    for i, W in enumerate(graphs):
        if W.shape[0] <= DENSE_MAX_N:  # "auto" would use dense: solved per image from the start
            assert batched.methods[i] == "dense" and batched.fallback_from[i] is None
            np.testing.assert_array_equal(batched.eigenvectors[i, :W.shape[0]], per_image[i].eigenvectors)
        else:
            assert batched.methods[i] == METHOD and batched.fallback_from[i] is None


def test_mixed_sizes_match_dense_eigh(vit_graphs, batched):
    """Eigenvalues and every separated invariant subspace against dense eigh (Davis-Kahan)."""
    for i, (name, W, _) in enumerate(vit_graphs):
        W64 = W.astype(np.float64)
        assert_matches_dense(batched.image(i), W64, *dense_reference(("vit-batched", name), W64))


def test_oriented_like_per_image(vit_graphs, per_image, batched):
    """Batched solve + batched orientation = per-image solve + orient_by_border, sign for sign
    on every vector separated from its neighbours (inside a cluster only the span is defined)."""
    grid_hw = [hw for _, _, hw in vit_graphs]
    grids, valid = grid_stack(batched.eigenvectors, grid_hw)
    oriented = orient_by_border_batched(grids, valid)
    for i, (h, w) in enumerate(grid_hw):
        ours = oriented[i, :, :h, :w]
        # The batched orientation is orient_by_border's, exactly, on the same vectors.
        np.testing.assert_array_equal(ours, orient_by_border(grids[i, :, :h, :w]))
        assert np.all(oriented[i, :, h:, :] == 0) and np.all(oriented[i, :, :, w:] == 0)
        ref = orient_by_border(per_image[i].eigenvectors.T.reshape(-1, h, w))
        lam = per_image[i].eigenvalues
        gaps = np.diff(lam)
        for j in range(1, K):
            separated = gaps[j - 1] > 1e-3 and (j == K - 1 or gaps[j] > 1e-3)
            if separated:
                cos = float(np.sum(ours[j] * ref[j]))
                assert cos > 0.99, (vit_graphs[i][0], j, cos)


def test_independent_of_batch_order(vit_graphs, batched):
    graphs = [W for _, W, _ in vit_graphs]
    order = np.random.default_rng(0).permutation(len(graphs))
    stack, sizes = padded([graphs[i] for i in order])
    again = smallest_eigenpairs_batched(stack, K, sizes=sizes)
    assert again.methods == tuple(batched.methods[i] for i in order)
    np.testing.assert_allclose(again.eigenvalues, batched.eigenvalues[order], rtol=0, atol=1e-9)
    np.testing.assert_allclose(again.eigenvectors, batched.eigenvectors[order], rtol=0, atol=1e-7)


def test_independent_of_padding(vit_graphs):
    """The same image padded by 0, 37 and 200 rows: the same pairs, padding exactly 0."""
    W = next(W for _, W, _ in vit_graphs if 600 <= W.shape[0] <= 800)
    n = W.shape[0]
    runs = []
    for extra in (0, 37, 200):
        stack, _ = padded([W], n + extra)
        runs.append(smallest_eigenpairs_batched(stack, K, sizes=[n]))
    # And all three in one batch, padded to a common n + 200.
    together = np.zeros((3, n + 200, n + 200), np.float32)
    together[:, :n, :n] = W
    runs.append(smallest_eigenpairs_batched(together, K, sizes=[n, n, n]))
    first = runs[0]
    for out in runs:
        assert all(m == METHOD for m in out.methods)
        assert np.all(out.eigenvectors[:, n:] == 0.0)
        for i in range(len(out)):
            np.testing.assert_allclose(out.eigenvalues[i], first.eigenvalues[0], rtol=0, atol=1e-7)
            np.testing.assert_allclose(out.eigenvectors[i, :n, :4], first.eigenvectors[0, :, :4], atol=1e-5)


def test_padding_content_is_never_read(vit_graphs):
    """Padding is masked, not trusted: finite junk there changes nothing."""
    W = next(W for _, W, _ in vit_graphs if 600 <= W.shape[0] <= 800)
    n = W.shape[0]
    clean, _ = padded([W], n + 50)
    junk = clean.copy()
    junk[0, n:, :] = 0.5
    junk[0, :, n:] = 0.25
    a = smallest_eigenpairs_batched(clean, K, sizes=[n])
    b = smallest_eigenpairs_batched(junk, K, sizes=[n])
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
    np.testing.assert_array_equal(a.eigenvectors, b.eigenvectors)


def test_forced_failure_goes_to_the_per_image_solver(vit_graphs, per_image):
    """maxiter=1: no image converges in the batch; each is redone per image (whose own
    krylov fails too, so dense eigh answers) and the record says so."""
    graphs = [W for _, W, _ in vit_graphs]
    stack, sizes = padded(graphs)
    out = smallest_eigenpairs_batched(stack, K, sizes=sizes, maxiter=1)
    for i, W in enumerate(graphs):
        assert out.methods[i] == "dense"
        assert out.fallback_from[i] == (None if W.shape[0] <= DENSE_MAX_N else METHOD)
        assert out.max_residuals[i] < 1e-12
        dense = smallest_eigenpairs(W, K, maxiter=1)
        np.testing.assert_array_equal(out.eigenvalues[i], dense.eigenvalues)
        np.testing.assert_array_equal(out.eigenvectors[i, :W.shape[0]], dense.eigenvectors)
    assert_same_pairs(out, graphs, per_image)


def test_isolated_real_node_is_not_padding(vit_graphs):
    """A real node with no edges keeps L's eigenvalue 1 and x_0 = 1/sqrt(n) there, as per image."""
    W = next(W for _, W, _ in vit_graphs if 600 <= W.shape[0] <= 800).copy()
    W[5, :] = W[:, 5] = 0.0
    n = W.shape[0]
    stack, _ = padded([W], n + 30)
    out = smallest_eigenpairs_batched(stack, K, sizes=[n])
    ref = smallest_eigenpairs(W, K)
    assert out.methods == (METHOD,)
    assert_same_pairs(out, [W], [ref])
    assert out.eigenvectors[0, 5, 0] == 1.0 / np.sqrt(n)
    np.testing.assert_allclose(out.eigenvectors[0, 5, 1:], 0.0, atol=1e-4)


def test_tight_tolerance_iterates_in_float64(vit_graphs):
    """tol below FLOAT32_MIN_TOL iterates in float64. The graph must be float64 too: from
    float32 W the degrees carry float32 rounding and the residual floor is ~3e-9 (per image
    alike, which then falls back to dense)."""
    W = next(W for _, W, _ in vit_graphs if 600 <= W.shape[0] <= 800)
    stack, sizes = padded([W], W.shape[0] + 20, dtype=np.float64)
    out = smallest_eigenpairs_batched(stack, K, sizes=sizes, tol=1e-9)
    assert out.methods == (METHOD,) and out.max_residuals[0] <= 1e-9
    ref_vals, _ = dense_reference(("vit-batched-f64", W.shape[0]), W.astype(np.float64))
    np.testing.assert_allclose(out.eigenvalues[0], ref_vals[:K], atol=1e-12)


def test_device_branch_on_the_host(vit_graphs, batched, monkeypatch):
    """The GPU-only branch (re-orthogonalise every image, keep the result where needed,
    instead of reading per-image flags) run on NumPy: the same pairs."""
    import kernels.batched_eigensolver as module

    monkeypatch.setattr(module, "_host_reads_are_free", lambda xp: False)
    graphs = [W for _, W, _ in vit_graphs]
    stack, sizes = padded(graphs)
    out = smallest_eigenpairs_batched(stack, K, sizes=sizes)
    assert out.methods == batched.methods
    np.testing.assert_allclose(out.eigenvalues, batched.eigenvalues, rtol=0, atol=1e-9)
    np.testing.assert_allclose(out.eigenvectors, batched.eigenvectors, rtol=0, atol=1e-6)


def test_k1_image_accessor_and_bad_inputs(vit_graphs):
    graphs = [W for _, W, _ in vit_graphs[:2]]
    stack, sizes = padded(graphs)
    one = smallest_eigenpairs_batched(stack, 1, sizes=sizes)
    for i, n in enumerate(sizes):
        pairs = one.image(i)
        assert pairs.eigenvalues.shape == (1,) and pairs.eigenvectors.shape == (n, 1)
        assert np.array_equal(pairs.eigenvectors[:, 0], np.full(n, 1.0 / np.sqrt(n)))
        assert np.all(one.eigenvectors[i, n:] == 0.0)
    with pytest.raises(ValueError):
        smallest_eigenpairs_batched(stack[0], K)  # not a stack
    with pytest.raises(ValueError):
        smallest_eigenpairs_batched(stack, 0, sizes=sizes)
    with pytest.raises(ValueError):
        smallest_eigenpairs_batched(stack, int(sizes.min()) + 1, sizes=sizes)
    with pytest.raises(ValueError):
        smallest_eigenpairs_batched(stack, K, sizes=[sizes[0]])
    with pytest.raises(ValueError):
        smallest_eigenpairs_batched(stack, K, sizes=[stack.shape[1] + 1, 10])
    bad = stack.copy()
    bad[1, 3, 4] = np.nan
    with pytest.raises(ValueError, match=r"\[1\]"):
        smallest_eigenpairs_batched(bad, K, sizes=sizes)
    empty = stack.copy()
    empty[0] = 0.0
    with pytest.raises(ValueError, match="no edges"):
        smallest_eigenpairs_batched(empty, K, sizes=sizes)


# ------------------------------------------------------------------------------ orientation

def test_grid_stack_places_each_grid_top_left():
    rng = np.random.default_rng(0)
    grid_hw = [(3, 5), (4, 2), (1, 6)]
    N, k = 20, 3
    vecs = rng.standard_normal((3, N, k))
    grids, valid = grid_stack(vecs, grid_hw)
    assert grids.shape == (3, k, 4, 6) and valid.shape == (3, 4, 6)
    for i, (h, w) in enumerate(grid_hw):
        np.testing.assert_array_equal(grids[i, :, :h, :w], vecs[i, :h * w].T.reshape(k, h, w))
        assert valid[i, :h, :w].all() and valid[i].sum() == h * w
        assert np.all(grids[i][:, ~valid[i]] == 0)


def test_orientation_tie_rules_match_per_image():
    """Hand-made ties, with dyadic entries so that every sum is exact in any order: the count
    decides; a count tie goes to the border sum; a count and sum tie to the sign of the largest
    |entry| (its first occurrence); an all-zero vector stays; vector 0 never flips. Grids of
    1 x w and 2 x w (all border) and h x w, in a larger canvas."""
    rng = np.random.default_rng(3)
    grid_hw = [(4, 5), (1, 6), (2, 3), (5, 5), (3, 4)]
    H, W, k = 5, 6, 9
    cases = []
    for h, w in grid_hw:
        edge = np.flatnonzero(border_mask(h, w).ravel())  # ascending: row-major order
        inner = np.flatnonzero(~border_mask(h, w).ravel())
        vecs = rng.integers(-4, 5, size=(k, h, w)).astype(np.float64) / 4
        vecs[0] = -1.0  # never touched, whatever its sign
        ties = {2: {},  # all zero
                3: {edge[0]: 0.75, edge[1]: -0.25},  # count tie, border sum > 0: flip
                4: {edge[0]: 0.5, edge[1]: -0.5, edge[2]: -1.0, edge[3]: 1.0},  # peak -1 first: flip
                5: {edge[0]: 1.0, edge[1]: -1.0},  # peak +1 first: keep
                6: {edge[0]: -1.0, edge[1]: 1.0}}  # peak -1 first: flip
        if inner.size:  # count and sum tie, the peak inside
            ties[7] = {edge[0]: 0.5, edge[1]: -0.5, inner[0]: -1.0}
        for j, entries in ties.items():
            vecs[j] = 0.0
            for cell, value in entries.items():
                vecs[j].flat[cell] = value
        cases.append(vecs)
    grids = np.zeros((len(grid_hw), k, H, W))
    valid = np.zeros((len(grid_hw), H, W), bool)
    for i, (h, w) in enumerate(grid_hw):
        grids[i, :, :h, :w] = cases[i]
        valid[i, :h, :w] = True
    oriented = orient_by_border_batched(grids, valid)
    for i, (h, w) in enumerate(grid_hw):
        expected = orient_by_border(cases[i])
        np.testing.assert_array_equal(oriented[i, :, :h, :w], expected)
        flips = [bool(np.any(expected[j] != cases[i][j])) for j in range(k)]
        assert flips[2:7] == [False, True, True, False, True], (h, w, flips)
        assert not flips[0]


# ------------------------------------------------------------------------------------ GPU

@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU (CPU path tested above)")
class TestCuPy:
    def test_cupy_matches_per_image(self, vit_graphs, per_image, batched):
        import cupy

        graphs = [W for _, W, _ in vit_graphs]
        stack, sizes = padded(graphs, xp=cupy)
        out = smallest_eigenpairs_batched(stack, K, sizes=cupy.asarray(sizes))  # device sizes work too
        assert isinstance(out.eigenvalues, cupy.ndarray) and isinstance(out.eigenvectors, cupy.ndarray)
        assert out.methods == batched.methods
        assert_same_pairs(out, graphs, per_image)

    def test_cupy_independent_of_order_and_padding(self, vit_graphs):
        import cupy

        W = next(W for _, W, _ in vit_graphs if 600 <= W.shape[0] <= 800)
        n = W.shape[0]
        base = smallest_eigenpairs_batched(padded([W], n, xp=cupy)[0], K, sizes=[n])
        for extra in (37, 200):
            out = smallest_eigenpairs_batched(padded([W], n + extra, xp=cupy)[0], K, sizes=[n])
            assert bool(cupy.all(out.eigenvectors[:, n:] == 0.0))
            np.testing.assert_allclose(to_numpy(out.eigenvalues), to_numpy(base.eigenvalues), atol=1e-7)
        graphs = [W for _, W, _ in vit_graphs]
        order = np.random.default_rng(0).permutation(len(graphs))
        stack, sizes = padded(graphs, xp=cupy)
        a = smallest_eigenpairs_batched(stack, K, sizes=sizes)
        stack, sizes = padded([graphs[i] for i in order], xp=cupy)
        b = smallest_eigenpairs_batched(stack, K, sizes=sizes)
        np.testing.assert_allclose(to_numpy(b.eigenvalues), to_numpy(a.eigenvalues)[order], atol=1e-7)

    def test_cupy_forced_failure(self, vit_graphs, per_image):
        import cupy

        graphs = [W for _, W, _ in vit_graphs]
        stack, sizes = padded(graphs, xp=cupy)
        out = smallest_eigenpairs_batched(stack, K, sizes=sizes, maxiter=1)
        assert all(m == "dense" for m in out.methods)
        assert [f for f in out.fallback_from] == [None if n <= DENSE_MAX_N else METHOD for n in sizes]
        assert_same_pairs(out, graphs, per_image)

    def test_cupy_orientation_identical(self, vit_graphs, batched):
        import cupy

        grid_hw = [hw for _, _, hw in vit_graphs]
        grids, valid = grid_stack(batched.eigenvectors, grid_hw)
        on_gpu = orient_by_border_batched(*grid_stack(cupy.asarray(batched.eigenvectors), grid_hw))
        assert isinstance(on_gpu, cupy.ndarray)
        np.testing.assert_array_equal(to_numpy(on_gpu), orient_by_border_batched(grids, valid))
