"""The iterative cut in rounds across a batch, each round's sub-graphs solved as one padded stack,
against the cut image by image, on real-image graphs (the offline backbone on the samples)."""
import numpy as np
import pytest

from kernels import smallest_eigenpairs
from kernels.lowrank import subgraph
from pipeline.batch.extractor import SpectralExtractor
from pipeline.config import ExtractConfig
from pipeline.io.sources import list_images
from pipeline.objects.discovery import (DiscoveryConfig, discover_batch, iterative_objects, iterative_objects_batch,
                                        remaining_fiedler)


@pytest.fixture(scope="module")
def sample_graphs(offline_weights):
    """(eigenvectors, eigenvalues, W) of the four samples at the default long side (N 672..1,024)."""
    extractor = SpectralExtractor(ExtractConfig(), batch_size=4)
    return [(x.spectrum.eigenvectors, x.spectrum.eigenvalues, x.affinity)
            for x in extractor.extract(list_images("samples"))]


def angle(a: np.ndarray, b: np.ndarray) -> float:
    cos = abs(float(a @ b)) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.degrees(np.arccos(min(1.0, cos))))


def test_masked_stack_cut_is_the_sub_graph_cut(sample_graphs):
    """Each graph with the Fiedler object's cells (and, for one, a checkerboard of others)
    removed: the stacked solve of the masked graphs gives each sub-graph's own Fiedler pair,
    0 on removed cells."""
    graphs, masks = [], []
    for i, (vectors, _, W) in enumerate(sample_graphs):
        keep = vectors[1].ravel() <= np.mean(vectors[1])
        if i == 1:
            keep &= np.arange(keep.size) % 3 != 0
        graphs.append(W)
        masks.append(keep)
    stacked = remaining_fiedler(graphs, masks, batched=True)
    for W, keep, (lam, vec) in zip(graphs, masks, stacked):
        alone = smallest_eigenpairs(subgraph(W, np.flatnonzero(keep)), 2)
        assert abs(lam - float(alone.eigenvalues[1])) <= 1e-5
        assert angle(vec[keep], alone.eigenvectors[:, 1]) <= 0.01
        assert not vec[~keep].any()


def test_batched_rounds_find_the_objects_found_image_by_image(sample_graphs):
    cfg = DiscoveryConfig()  # iterative, up to 8 cuts, mean threshold
    alone = [iterative_objects(v, lam, W, cfg) for v, lam, W in sample_graphs]
    for order in ([0, 1, 2, 3], [3, 1, 0, 2]):  # results independent of the batch's order
        batch = iterative_objects_batch([(sample_graphs[i][0], sample_graphs[i][1], sample_graphs[i][2], None)
                                         for i in order], cfg, batched=True)
        for i, found in zip(order, batch):
            assert len(found) == len(alone[i]) >= 2
            for a, b in zip(alone[i], found):
                assert np.array_equal(a.mask, b.mask)
                assert (a.rank, a.fallback) == (b.rank, b.fallback)
                assert abs(a.eigenvalue - b.eigenvalue) <= 1e-5


def test_one_failing_image_costs_only_itself(sample_graphs):
    v, lam, W = sample_graphs[0]
    bad = (v, lam, np.full_like(W, np.nan), None)
    out = discover_batch([(v, lam, W, None), bad], DiscoveryConfig(), batched=True)
    assert isinstance(out[1], Exception) and not isinstance(out[0], Exception)
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(out[0], iterative_objects(v, lam, W, DiscoveryConfig())))


def test_one_batched_matmul_gives_each_images_graph(offline_weights):
    """The stack a GPU batch builds in one GEMM holds every image's feature_affinity graph,
    zero-padded; the extractor solving from it gives the per-image spectra."""
    from pipeline.spectral.affinity import batched_feature_affinity, feature_affinity

    extractor = SpectralExtractor(ExtractConfig(), batch_size=4)
    feats = [o.features for o in extractor.backbone([d.image for d in extractor.decoder(list_images("samples"))])]
    stack, sizes = batched_feature_affinity(feats)
    assert len(set(sizes)) > 1  # mixed sizes
    for i, f in enumerate(feats):
        np.testing.assert_allclose(stack[i, :sizes[i], :sizes[i]], feature_affinity(f), rtol=0, atol=2e-6)
        assert not stack[i, sizes[i]:].any() and not stack[i, :, sizes[i]:].any()
    alone = {x.ref.image_id: x for x in extractor.extract(list_images("samples"))}
    extractor.batched_solve = True  # the GPU's path, on the CPU
    together = {x.ref.image_id: x for x in extractor.extract(list_images("samples"))}
    for key, a in alone.items():
        b = together[key]
        assert b.spectrum.method == "batched_krylov" and b.affinity.shape == a.affinity.shape
        assert np.abs(a.spectrum.eigenvalues - b.spectrum.eigenvalues).max() <= 1e-5
        assert angle(a.spectrum.eigenvectors[1].ravel(), b.spectrum.eigenvectors[1].ravel()) <= 0.01
        assert all(float(u.ravel() @ v.ravel()) > 0 for u, v in zip(a.spectrum.eigenvectors, b.spectrum.eigenvectors))
