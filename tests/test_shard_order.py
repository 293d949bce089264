"""A semantic result depends on the images and the settings, not on how the shards hold the
rows: one extraction's rows, rewritten one image per shard in reverse order, give the same
clusters, region refit, self-trained head and label PNGs, byte for byte (real backbone, real
Parquet)."""
import json

import numpy as np
import pytest

from jobs.cluster import cluster_and_label
from jobs.extract import run_extract
from pipeline.config import BackboneConfig, EigenConfig, ExtractConfig, RuntimeConfig, SegmentsConfig
from pipeline.io.shards import read_table
from pipeline.semantic.clustering import ClusterConfig
from pipeline.semantic.labelling import PseudoLabelConfig
from pipeline.semantic.self_training import SelfTrainConfig
from tests.conftest import SAMPLES
from tests.shard_layouts import recut


@pytest.fixture(scope="module")
def two_layouts(tmp_path_factory, offline_weights):
    root = tmp_path_factory.mktemp("order")
    cfg = ExtractConfig(backbone=BackboneConfig(long_side=112), eigen=EigenConfig(k=6), store_features=True,
                        segments=SegmentsConfig(n_segments=4, n_eigenvectors=5, features="pool", store_patches=True))
    run_extract(str(SAMPLES), str(root / "a"), cfg, RuntimeConfig(batch_size=3), local=True)  # 2 shards
    assert recut(str(root / "a"), str(root / "b"), rows_per_shard=1, reverse=True) == len(list(SAMPLES.glob("*.jpg")))
    return root / "a", root / "b", cfg.digest()


def test_recut_shards_hold_the_same_rows_in_another_order(two_layouts):
    a, b, _ = two_layouts
    rows_a, rows_b = read_table(str(a)).to_pylist(), read_table(str(b)).to_pylist()
    assert [r["image_id"] for r in rows_b] == [r["image_id"] for r in rows_a][::-1]
    assert sorted(rows_a, key=lambda r: r["image_id"]) == sorted(rows_b, key=lambda r: r["image_id"])


def test_labels_do_not_depend_on_the_shards_cut_or_order(two_layouts, tmp_path):
    a, b, digest = two_layouts
    # A sample smaller than the segments (the fit samples, then Lloyd passes over the stream), a
    # region refit, and a head trained on a sample of the patches: every step that reads the
    # whole dataset.
    cfg = PseudoLabelConfig(ClusterConfig(n_clusters=2, seed=0, pca_dim=2, sample_size=3, n_init=2),
                            min_cluster_share=0.3, region_rounds=1,
                            self_train=SelfTrainConfig(epochs=3, sample_patches=150, batch_patches=64))
    first = cluster_and_label(str(a), str(tmp_path / "a"), digest, cfg)
    second = cluster_and_label(str(b), str(tmp_path / "b"), digest, cfg)
    assert first["n_segments"] > cfg.cluster.sample_size
    for key in ("n_images", "n_segments", "n_regions", "segments_per_label", "lloyd_passes"):
        assert first[key] == second[key], key
    assert first["n_regions"] > cfg.cluster.sample_size and first["lloyd_passes"] > 0  # the refit streamed too
    for name in ("centroids", "pca_mean", "pca_components"):
        np.testing.assert_array_equal(np.load(tmp_path / "a" / "clusters.npz")[name],
                                      np.load(tmp_path / "b" / "clusters.npz")[name])
    pngs = sorted((tmp_path / "a" / "labels").glob("*.png"))
    assert len(pngs) == first["n_images"] > 0
    for png in pngs:
        assert png.read_bytes() == (tmp_path / "b" / "labels" / png.name).read_bytes(), png.name
    assert json.loads((tmp_path / "b" / "cluster.json").read_text())["shards"] == str(b)
