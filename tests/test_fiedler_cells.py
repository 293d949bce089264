"""Background per cell by the Fiedler vector (`--set pseudo_labels.fiedler_threshold=A`): the test by hand, and a
planted scene whose object segment spills onto the background, labelled exactly only with the
test, in the pseudo-labels and in the labels a self-training head learns from."""
import argparse
import json

import numpy as np
import pytest

from jobs.cluster import OPTIONS, add_arguments
from pipeline.evaluation.semantic_metrics import confusion, hungarian_miou
from pipeline.io.schema import eigen_row, eigen_table
from pipeline.io.shards import write_shard
from pipeline.semantic.clustering import ClusterConfig
from pipeline.semantic.fiedler_cells import fiedler_background, with_fiedler_background
from pipeline.semantic.labelling import (PseudoLabelConfig, fit_label_clusters, pseudo_labels, segment_rows,
                                         self_train)
from pipeline.semantic.region_crops import RegionCropConfig
from pipeline.semantic.self_training import SelfTrainConfig, predict_probabilities

PLAIN = dict(pca_dim=0, whiten=False)  # planted features: few vectors, nothing to whiten


def test_cells_at_most_the_mean_plus_a_std_multiple_are_background():
    fiedler = np.array([[-2.0, -1.0, 0.0], [1.0, 2.0, 6.0]])  # mean 1, std sqrt(7)
    stack = np.stack([np.ones_like(fiedler), fiedler])
    np.testing.assert_array_equal(fiedler_background(stack, 0.0), [[1, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(fiedler_background(stack, 0.5), fiedler <= 1 + 0.5 * np.sqrt(7))
    np.testing.assert_array_equal(fiedler_background(stack, -0.5), fiedler <= 1 - 0.5 * np.sqrt(7))
    flat = np.stack([np.ones((2, 3)), np.full((2, 3), 0.3)])
    assert not fiedler_background(flat, 0.0).any()  # no object to tell apart: nothing moves
    assert not fiedler_background(np.ones((1, 2, 3)), 0.0).any()  # no Fiedler vector
    grid = np.array([[3, 3, 0], [2, 2, 2]], np.uint8)
    out = with_fiedler_background(grid, fiedler_background(stack, 0.0))
    np.testing.assert_array_equal(out, [[0, 0, 0], [0, 2, 2]])
    assert grid[0, 0] == 3  # a copy


def test_the_threshold_is_recorded_and_named_by_the_digest_but_not_the_regions():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["shards", "--out", "o", "--set", "pseudo_labels.fiedler_threshold=0.25"])
    cfg = OPTIONS.configs(args)["pseudo_labels"]
    assert json.loads(json.dumps(cfg.to_dict()))["fiedler_threshold"] == 0.25
    off = OPTIONS.configs(parser.parse_args(["shards", "--out", "o"]))["pseudo_labels"]
    assert off.fiedler_threshold is None
    at_mean = PseudoLabelConfig(fiedler_threshold=0.0)
    assert len({off.digest("e"), at_mean.digest("e"), cfg.digest("e")}) == 3  # 0 (the mean) is on
    crops = RegionCropConfig("efficientnet_lite0_supervised")
    assert (PseudoLabelConfig(region_crops=crops, fiedler_threshold=0.0).regions_digest("e")
            == PseudoLabelConfig(region_crops=crops).regions_digest("e"))  # the regions are the segments'
    with pytest.raises(ValueError, match="fiedler_threshold"):
        PseudoLabelConfig(fiedler_threshold=float("nan"))


def _scene(tmp_path, n_images=8):
    """4 x 6 cells of 16 px; each image one object of 2 x 3 cells, class 1 or 2 in turn, whose
    segment also takes the 3 background cells below it (a segment straddling the object's edge).
    The Fiedler vector is +1 on the object, -1 elsewhere. Stored patch features: the object's
    class (dims 0, 1), background (dim 2), and the spilled cells their own kind (dim 3), so a head
    learns whatever label those cells are given."""
    rows, truth = [], {}
    for i in range(n_images):
        cls, col = 1 + i % 2, i % 4
        segment_map = np.zeros((4, 6), np.int16)
        segment_map[1:4, col:col + 3] = 1
        fiedler = -np.ones((4, 6), np.float32)
        fiedler[1:3, col:col + 3] = 1
        patches = np.zeros((4, 6, 4), np.float32)
        patches[..., 2] = 1
        patches[1:4, col:col + 3] = np.eye(4, dtype=np.float32)[3]
        patches[1:3, col:col + 3] = np.eye(4, dtype=np.float32)[cls - 1]
        gt = np.zeros((64, 96), np.int64)
        gt[16:48, 16 * col:16 * (col + 3)] = cls
        truth[f"im{i}"] = gt
        rows.append(eigen_row(
            image_id=f"im{i}", source_uri=f"im{i}.png", image_sha256="-", height=64, width=96,
            input_height=64, input_width=96, patch_size=16, grid_h=4, grid_w=6, backbone="planted",
            weights_digest="-", config_digest="planted", k=2, eigenvalues=[0.0, 0.1], eigensolver="-",
            max_residual=0.0, eigenvectors=np.stack([np.ones((4, 6), np.float32), fiedler]).ravel(),
            feature_dim=4, features=patches.ravel(),
            n_segments=1, segment_map=segment_map.ravel(), segment_boxes=np.zeros(4, np.float32),
            segment_dim=2, segment_features=np.eye(2, dtype=np.float32)[cls - 1]))
    shards = str(tmp_path / "shards")
    write_shard(eigen_table(rows), shards, "eigs", "{}")
    return shards, truth


def _miou(predictions: dict, truth: dict) -> float:
    counts = sum(confusion(p, truth[i], 3, 3, None) for i, p in predictions.items())
    return hungarian_miou(counts).miou


@pytest.mark.parametrize("threshold", [None, 0.0])
def test_spilled_cells_are_background_only_with_the_fiedler_test(tmp_path, threshold):
    shards, truth = _scene(tmp_path)
    cfg = PseudoLabelConfig(ClusterConfig(n_clusters=2, seed=0, **PLAIN), min_cluster_share=0, region_rounds=0,
                            fiedler_threshold=threshold,
                            self_train=SelfTrainConfig(epochs=300, lr=0.1, features="tokens", label_weight=0))
    model = fit_label_clusters(shards, "planted", cfg).model
    head = self_train(shards, "planted", model, cfg.self_train, fiedler_threshold=threshold)
    labels, spilled = {}, []
    for row in segment_rows(shards, "planted", patch_features="tokens"):
        segment_labels, labels[row["image_id"]] = pseudo_labels(row, model, cfg, None)
        cells = predict_probabilities(head, row["patch_features"]).argmax(axis=0)
        col = int(row["image_id"][2:]) % 4
        spilled += cells[3, col:col + 3].tolist()
    # Without the test each object's label covers 9 cells, 6 of them object (IoU 2/3 per class),
    # and 15 of the 18 background cells are labelled background.
    expected = 1.0 if threshold is not None else (15 / 18 + 2 / 3 + 2 / 3) / 3
    assert _miou(labels, truth) == pytest.approx(expected)
    # The head learns the spilled cells' own feature as whatever the labels call them.
    assert (set(spilled) == {0}) == (threshold is not None)
