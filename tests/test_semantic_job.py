"""Semantic segmentation end to end: extraction with segments (real backbone, real shards),
the final clustering task locally and on Ray, pseudo-label PNGs read back, and
`deep-spectral evaluate semantic` on COCO128 images."""
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.cluster import LABEL_DIR, cluster_and_label, pick_digest, run_cluster
from jobs.extract import run_extract
from pipeline.semantic.clustering import ClusterConfig
from pipeline.config import BackboneConfig, EigenConfig, ExtractConfig, RuntimeConfig, SegmentsConfig
from pipeline.semantic.pseudo_labels import decode_label_png
from pipeline.io.schema import segments_of
from pipeline.semantic.labelling import PseudoLabelConfig
from pipeline.io.shards import read_table
from pipeline.io.sources import list_images
from tests.conftest import SAMPLES, shared_data


def extract_with_segments(out, features="crop"):
    cfg = ExtractConfig(backbone=BackboneConfig(long_side=112), eigen=EigenConfig(k=6),
                        segments=SegmentsConfig(n_segments=4, n_eigenvectors=5, features=features,
                                                crop_size=56))
    run_extract(str(SAMPLES), str(out), cfg, RuntimeConfig(batch_size=4), local=True)
    return cfg


@pytest.fixture(scope="module")
def shards(tmp_path_factory, offline_weights):
    out = tmp_path_factory.mktemp("semantic") / "shards"
    cfg = extract_with_segments(out)
    return out, cfg


def test_extraction_writes_segments_next_to_eigenvectors(shards):
    out, cfg = shards
    rows = read_table(str(out)).to_pylist()
    assert len(rows) == len(list(SAMPLES.glob("*.jpg")))
    # 4 k-means segments, minus the border one and any other on the Fiedler background side
    assert all(0 <= r["n_segments"] <= 3 for r in rows) and sum(r["n_segments"] > 0 for r in rows) >= 2
    for row in rows:
        labels, boxes, features = segments_of(row)
        n = row["n_segments"]
        assert labels.shape == (row["grid_h"], row["grid_w"])
        assert set(np.unique(labels)) == set(range(n + 1))  # 0 = background, then 1..n
        assert features.shape == (n, 384) and np.all(np.isfinite(features))
        assert np.all(boxes[:, :2] < boxes[:, 2:]) and np.all(boxes[:, 2] <= row["width"])
        assert np.all(boxes[:, 3] <= row["height"])


def test_cluster_task_writes_labels_deterministically(shards, tmp_path):
    out, cfg = shards
    labels_cfg = PseudoLabelConfig(ClusterConfig(n_clusters=2, seed=0))
    digest = pick_digest(str(out), None)
    assert digest == cfg.digest()
    first = cluster_and_label(str(out), str(tmp_path / "a"), digest, labels_cfg)
    second = cluster_and_label(str(out), str(tmp_path / "b"), digest, labels_cfg)
    rows = read_table(str(out)).to_pylist()
    assert first["n_images"] == len(rows) and first["n_segments"] == sum(r["n_segments"] for r in rows)
    assert second["segments_per_label"] == first["segments_per_label"]

    table = pq.read_table(tmp_path / "a" / LABEL_DIR).to_pylist()
    assert len(table) == first["n_segments"] and {r["label"] for r in table} <= {1, 2}
    for row in rows:
        stem = row["image_id"].rsplit(".", 1)[0]
        a = (tmp_path / "a" / "labels" / f"{stem}.png").read_bytes()
        assert a == (tmp_path / "b" / "labels" / f"{stem}.png").read_bytes()
        pixels = decode_label_png(a)
        assert pixels.shape == (row["height"], row["width"])
        seg_labels = {r["segment"]: r["label"] for r in table if r["image_id"] == row["image_id"]}
        assert set(np.unique(pixels)) <= {0} | set(seg_labels.values())
    record = json.loads((tmp_path / "a" / "cluster.json").read_text())
    assert record["config"]["cluster"]["n_clusters"] == 2 and sum(record["segments_per_label"]) == first["n_segments"]


def test_cluster_task_keeps_only_clusters_with_a_large_share_of_each_image(shards, tmp_path):
    out, cfg = shards
    labels_cfg = PseudoLabelConfig(ClusterConfig(n_clusters=3, pca_dim=0, whiten=False), min_cluster_share=0.5)
    record = cluster_and_label(str(out), str(tmp_path), cfg.digest(), labels_cfg)
    assert record["config"]["min_cluster_share"] == 0.5
    table = pq.read_table(tmp_path / LABEL_DIR).to_pylist()
    for row in read_table(str(out)).to_pylist():
        if not row["n_segments"]:
            continue
        areas = np.bincount(segments_of(row)[0].ravel(), minlength=row["n_segments"] + 1)[1:]
        cover = {}
        for r in table:
            if r["image_id"] == row["image_id"]:
                cover[r["label"]] = cover.get(r["label"], 0) + areas[r["segment"] - 1]
        # Every label left covers half the foreground, or it is the image's only one.
        assert len(cover) == 1 or min(cover.values()) >= 0.5 * areas.sum()


def test_region_rounds_refit_the_clusters_over_each_images_regions(shards, tmp_path):
    import dataclasses

    from pipeline.semantic.clustering import fit_clusters
    from pipeline.semantic.keyed_sample import Keys
    from pipeline.semantic.labelling import (fit_label_clusters, fit_segment_clusters, region_feature_batches,
                                             segment_classes)

    out, cfg = shards
    labels_cfg = PseudoLabelConfig(ClusterConfig(n_clusters=2, pca_dim=0, whiten=False), min_cluster_share=0.3)
    first = fit_segment_clusters(str(out), cfg.digest(), labels_cfg.cluster)
    batches = list(region_feature_batches(str(out), cfg.digest(), first, 0.3)())
    keys = Keys(np.concatenate([k.image_ids for k, _ in batches]), np.concatenate([k.index for k, _ in batches]))
    regions = np.concatenate([r for _, r in batches])
    expected, expected_keys = [], []  # by hand: per image, the area-weighted mean feature of each label's segments
    for row in read_table(str(out)).to_pylist():
        segment_map, _, features = segments_of(row)
        if len(features):
            classes = segment_classes(segment_map, features, first, 0.3)
            areas = np.bincount(segment_map.ravel(), minlength=len(features) + 1)[1:]
            expected += [np.average(features[classes == c], axis=0, weights=areas[classes == c])
                         for c in np.unique(classes)]
            expected_keys += [(row["image_id"], c) for c in np.unique(classes)]  # (image, class)
    np.testing.assert_allclose(regions, np.array(expected), rtol=1e-5, atol=1e-6)
    assert list(zip(keys.image_ids.tolist(), keys.index.tolist())) == expected_keys
    assert len(regions) < first.n_fitted  # some image had two segments under one label

    rounds = dataclasses.replace(labels_cfg, region_rounds=1)
    model, n_segments, n_regions = fit_label_clusters(str(out), cfg.digest(), rounds)
    assert n_segments == first.n_fitted and model.n_fitted == n_regions == len(regions)
    np.testing.assert_allclose(model.centroids, fit_clusters(lambda: iter([(keys, regions)]), rounds.cluster).centroids,
                               rtol=1e-5, atol=1e-6)
    # With PCA the refit keeps the segments' projection: only the centroids move.
    whitened = dataclasses.replace(rounds, cluster=ClusterConfig(n_clusters=2, pca_dim=3))
    segment_model = fit_segment_clusters(str(out), cfg.digest(), whitened.cluster)
    model = fit_label_clusters(str(out), cfg.digest(), whitened).model
    np.testing.assert_array_equal(model.pca_components, segment_model.pca_components)
    assert not np.allclose(model.centroids, segment_model.centroids)
    record = cluster_and_label(str(out), str(tmp_path), cfg.digest(), rounds)
    assert record["n_regions"] == len(regions) and record["n_segments"] == first.n_fitted
    assert record["config"]["region_rounds"] == 1
    # Fewer regions than clusters: the segments' model stays, and no regions are recorded. With
    # share 1 every image is one region, so one cluster more than the images is too many.
    images = sum(r["n_segments"] > 0 for r in read_table(str(out)).to_pylist())
    assert images + 1 <= first.n_fitted
    many = PseudoLabelConfig(ClusterConfig(n_clusters=images + 1, pca_dim=0, whiten=False), min_cluster_share=1.0,
                             region_rounds=1)
    fitted = fit_label_clusters(str(out), cfg.digest(), many)
    assert fitted.n_regions is None and fitted.model.n_fitted == first.n_fitted


@pytest.mark.ray
def test_cluster_runs_as_a_ray_task_with_the_same_labels(shards, tmp_path):
    ray = pytest.importorskip("ray")
    out, _ = shards
    labels_cfg = PseudoLabelConfig(ClusterConfig(n_clusters=2, seed=1))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = run_cluster(str(out), str(tmp_path / "ray"), labels_cfg)
    finally:
        ray.shutdown()
    local = run_cluster(str(out), str(tmp_path / "local"), labels_cfg, local=True)
    assert on_ray["n_segments"] == local["n_segments"]
    for png in (tmp_path / "local" / "labels").glob("*.png"):
        assert png.read_bytes() == (tmp_path / "ray" / "labels" / png.name).read_bytes()


def test_pick_digest_needs_segments(tmp_path, offline_weights):
    cfg = ExtractConfig(backbone=BackboneConfig(long_side=56), eigen=EigenConfig(k=3))
    run_extract(None, str(tmp_path), cfg, RuntimeConfig(), refs=list_images(str(SAMPLES))[:1], local=True)
    with pytest.raises(SystemExit, match="--segments"):
        pick_digest(str(tmp_path), None)


def test_evaluate_semantic_on_coco128(tmp_path, offline_weights):
    from jobs.cli import main

    root = shared_data("coco128")
    masks = tmp_path / "masks"  # three real masks and a corrupt one: that image fails alone
    masks.mkdir()
    for mask in sorted((root / "semantic_masks").glob("*.png"))[:3]:
        shutil.copy(mask, masks / mask.name)
    (masks / "000000000042.png").write_bytes(b"not a png")
    metrics = tmp_path / "m.json"
    code = main(["evaluate", "semantic", "--images", str(root / "images"),
                 "--masks", str(masks), "--label-map", str(root / "semantic_eval_map.json"),
                 "--seeds", "2", "--clusters", "3", "--segments", "4",
                 "--segment-features", "pool", "--long-side", "112", "--eigenvectors", "6",
                 "--store-features", "--self-train",
                 "--out", str(tmp_path / "out"), "--json", str(metrics), "--local"])
    assert code == 0
    report = json.loads(metrics.read_text())
    assert report["task"] == "semantic" and report["n_images"] == 3 and report["n_failed"] == 1
    assert report["failed"] == ["000000000042.jpg"]
    assert len(report["per_seed"]) == 2 and 0 <= report["miou"] <= 1 and report["miou_std"] >= 0
    assert 0 <= report["self_trained_miou"] <= 1
    assert report["config"]["extract"]["segments"]["n_segments"] == 4
    assert report["per_class_iou"]["background"] is not None
    pngs = sorted((tmp_path / "out" / "labels").glob("*.png"))
    assert len(pngs) == 3 and decode_label_png(pngs[0].read_bytes()).max() <= 3


def test_cluster_command_line(shards, tmp_path):
    from jobs.cli import main

    out, _ = shards
    assert main(["cluster", str(out), "--out", str(tmp_path / "labels"), "--clusters", "2",
                 "--set", "pseudo_labels.cluster.pca_dim=4", "--set", "pseudo_labels.cluster.whiten=true", "--refine", "guided", "--set", "pseudo_labels.min_cluster_share=0.3", "--set", "pseudo_labels.region_rounds=2", "--local"]) == 0
    record = json.loads((tmp_path / "labels" / "cluster.json").read_text())
    assert record["config"]["cluster"]["pca_dim"] == 4 and record["config"]["refine"] == "guided"
    assert record["config"]["min_cluster_share"] == 0.3 and record["config"]["region_rounds"] == 2
    assert record["config"]["cluster"]["whiten"] is True
    assert len(list((tmp_path / "labels" / "labels").glob("*.png"))) == record["n_images"]
    assert record["n_failed"] == 0
    with pytest.raises(SystemExit, match="min_cluster_share"):
        main(["cluster", str(out), "--out", str(tmp_path / "x"), "--set", "pseudo_labels.min_cluster_share=2", "--local"])
    with pytest.raises(ValueError, match="store-features"):  # self-training needs patch features
        main(["cluster", str(out), "--out", str(tmp_path / "st"), "--clusters", "2", "--self-train", "--local"])


def test_cluster_task_records_an_image_it_cannot_label(tmp_path, offline_weights):
    images = tmp_path / "images"
    images.mkdir()
    for img in sorted(SAMPLES.glob("*.jpg"))[:3]:
        shutil.copy(img, images / img.name)
    cfg = ExtractConfig(backbone=BackboneConfig(long_side=112), eigen=EigenConfig(k=6),
                        segments=SegmentsConfig(n_segments=4, features="pool"))
    run_extract(str(images), str(tmp_path / "shards"), cfg, RuntimeConfig(), local=True)
    gone = sorted(images.iterdir())[0]
    gone.unlink()  # guided refinement reads the image again
    record = cluster_and_label(str(tmp_path / "shards"), str(tmp_path / "out"), cfg.digest(),
                               PseudoLabelConfig(ClusterConfig(n_clusters=2), refine="guided"))
    assert record["n_images"] == 2 and record["n_failed"] == 1
    assert record["failed"][0]["image_id"] == gone.name
    assert sorted(p.stem for p in (tmp_path / "out" / "labels").glob("*.png")) == \
        sorted(p.stem for p in images.iterdir())
