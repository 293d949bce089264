"""Low-rank graphs W = F Fᵀ + s: eigenpairs from the factors against dense eigh of W itself,
the shift that makes W non-negative, sub-graphs for the iterative cut, and the graph kind."""
import numpy as np
import pytest
import scipy.linalg

from kernels import smallest_eigenpairs
from kernels.lowrank import LowRankGraph, lowrank_graph, min_cosine, subgraph
from pipeline.config import EigenConfig, ExtractConfig, GraphConfig
from pipeline.spectral.affinity import image_affinity
from pipeline.spectral.spectrum import graph_spectrum


def unit_rows(n, c, seed=0):
    f = np.random.default_rng(seed).normal(size=(n, c))
    f[: n // 3] += 2.0  # a cluster, so the spectrum has a gap
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def dense_pairs(W, k):
    d = W.sum(1)
    L = np.eye(len(W)) - W / np.sqrt(np.outer(d, d))
    lam, v = scipy.linalg.eigh(L, subset_by_index=[0, k - 1])
    x = v / np.sqrt(d)[:, None]
    return lam, x / np.linalg.norm(x, axis=0)


def test_eigenpairs_from_the_factors_match_dense_eigh_of_w():
    f = unit_rows(300, 12)
    W = lowrank_graph(f)
    assert W.shift == pytest.approx(-(f @ f.T).min()) and W.shift > 0
    assert (W.toarray() >= -1e-12).all() and W.toarray().min() == pytest.approx(0, abs=1e-12)
    pairs = smallest_eigenpairs(W, 8)
    lam, x = dense_pairs(W.toarray(), 8)
    assert pairs.method == "lowrank" and pairs.max_residual < 1e-10
    np.testing.assert_allclose(pairs.eigenvalues, lam, atol=1e-10)
    for j in range(1, 8):  # the same vectors up to sign (eigenvalues here are simple)
        assert abs(abs(pairs.eigenvectors[:, j] @ x[:, j]) - 1) < 1e-8
    np.testing.assert_allclose(pairs.eigenvectors[:, 0], 1 / np.sqrt(300))
    np.testing.assert_allclose(W.degrees(), W.toarray().sum(1))


def test_min_cosine_in_blocks_and_subgraphs(monkeypatch):
    import kernels.lowrank as lowrank

    f = unit_rows(97, 5, seed=1)
    monkeypatch.setattr(lowrank, "BLOCK_SCORES", 97 * 7)  # 7 rows a block, a short last one
    assert min_cosine(f) == pytest.approx((f @ f.T).min())
    W = lowrank_graph(f)
    index = np.array([3, 10, 50, 96])
    np.testing.assert_allclose(subgraph(W, index).toarray(), W.toarray()[index][:, index])
    dense = W.toarray()
    np.testing.assert_allclose(subgraph(dense, index), dense[index][:, index])


def test_too_many_eigenpairs_for_the_rank_is_an_error():
    with pytest.raises(ValueError, match="rank-4 graph"):
        smallest_eigenpairs(LowRankGraph(unit_rows(50, 3), 1.0), 6)


def test_lowrank_graph_kind_keeps_the_default_digest_and_refuses_a_colour_term():
    assert ExtractConfig().digest() == "9efb740a015f7119"
    cfg = ExtractConfig(graph=GraphConfig(kind="lowrank"))
    assert cfg.digest() != ExtractConfig().digest() and ExtractConfig.from_dict(cfg.to_dict()) == cfg
    features = unit_rows(6 * 8, 16).reshape(6, 8, 16).astype(np.float32)
    image = np.zeros((60, 80, 3), np.uint8)
    W = image_affinity(features, image, GraphConfig(kind="lowrank", upsample=2))
    assert isinstance(W, LowRankGraph) and W.shape == (192, 192)
    spectrum = graph_spectrum(W, (12, 16), EigenConfig(k=5))
    assert spectrum.method == "lowrank" and spectrum.eigenvectors.shape == (5, 12, 16)
    with pytest.raises(ValueError, match="colour"):
        image_affinity(features, image, GraphConfig(kind="lowrank", knn_lambda=0.1))
