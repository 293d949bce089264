"""Semantic segmentation building blocks: per-image segments, dataset clustering, pseudo-label
PNGs, label maps and Hungarian mIoU, on synthetic inputs whose answers are known."""
import dataclasses
import json

import numpy as np
import pytest
import threadpoolctl
import torch
from PIL import Image

from pipeline.semantic.clustering import ClusterConfig, fit_clusters, keyed_sample, l2_normalize
from pipeline.config import SegmentsConfig
from pipeline.features.geometry import GridGeometry
from pipeline.semantic.pseudo_labels import (decode_label_png, encode_label_png, label_grid, label_image,
                                            label_image_from_scores)
from pipeline.semantic.segments import pooled_features, segment_boxes, segment_crops, segment_map
from pipeline.io.semantic_masks import read_class_mask, read_label_map, voc_semantic
from pipeline.semantic.self_training import SelfTrainConfig, predict_probabilities, train_head, with_labels
from pipeline.evaluation.semantic_metrics import confusion, hungarian_miou
from tests.conftest import shared_data

# ------------------------------------------------------------------------- Hungarian mIoU


def test_hungarian_scores_a_permuted_perfect_labelling_as_100():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, size=(40, 50))
    perm = np.array([3, 0, 4, 1, 2])
    score = hungarian_miou(confusion(perm[gt], gt, 5, 5))
    assert score.miou == 1.0 and score.pixel_accuracy == 1.0
    np.testing.assert_array_equal(score.match, perm)


def test_hungarian_iou_by_hand_and_ignored_pixels():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])  # label 1 ~ class 0, label 0 ~ class 1
    counts = confusion(pred, gt, 2, 2, ignore_index=255)
    np.testing.assert_array_equal(counts, [[0, 2], [4, 1]])
    score = hungarian_miou(counts)
    # class 0 <- label 1: tp 4, union 5 + 4 - 4 = 5; class 1 <- label 0: tp 2, union 2 + 3 - 2 = 3
    np.testing.assert_allclose(score.iou, [4 / 5, 2 / 3])
    assert score.miou == pytest.approx((4 / 5 + 2 / 3) / 2)
    assert score.pixel_accuracy == pytest.approx(6 / 7)


def test_absent_classes_leave_the_mean_and_missing_predictions_score_zero():
    gt = np.array([[0, 0, 2, 2]])
    score = hungarian_miou(confusion(np.zeros((1, 4), int), gt, 1, 3))
    assert np.isnan(score.iou[1])  # class 1 has no pixels anywhere
    assert sorted(score.iou[[0, 2]]) == [0.0, 0.5] and score.miou == 0.25


def test_confusion_rejects_classes_outside_the_range():
    with pytest.raises(ValueError, match="label map"):
        confusion(np.zeros((2, 2), int), np.full((2, 2), 7), 2, 3, ignore_index=255)


# ------------------------------------------------------------------------- clustering


def blobs(n_per: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(8)[:4] * 5
    truth = np.repeat(np.arange(4), n_per)
    return (centres[truth] + rng.normal(scale=0.3, size=(len(truth), 8))).astype(np.float32), truth


def stream(x: np.ndarray, batch: int):
    return lambda: (x[s:s + batch] for s in range(0, len(x), batch))


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("sample_size", [10_000, 50])  # all in memory / streamed Lloyd passes
def test_clustering_is_deterministic_for_a_seed_and_finds_the_blobs(sample_size):
    x, truth = blobs(300)
    order = np.random.default_rng(1).permutation(len(x))
    x, truth = x[order], truth[order]
    # Plain k-means: the streamed passes are under test. (Whitening all 8 dimensions of these
    # blobs would scale their 5 pure-noise directions up to the 3 signal ones.)
    cfg = ClusterConfig(n_clusters=4, seed=3, sample_size=sample_size, n_init=2, pca_dim=0, whiten=False)
    first = fit_clusters(stream(x, 64), cfg)
    second = fit_clusters(stream(x, 64), cfg)
    np.testing.assert_array_equal(first.centroids, second.centroids)
    labels = first.assign(x)
    np.testing.assert_array_equal(labels, second.assign(x))
    assert same_partition(labels, truth)
    assert first.n_fitted == len(x)
    assert (first.n_passes > 0) == (sample_size < len(x))


@pytest.mark.parametrize("user_api, dim, pca_dim", [("openmp", 16, 0), (None, 600, 64)])
def test_clustering_does_not_depend_on_the_callers_thread_count(user_api, dim, pca_dim):
    # Structureless data: k-means has many local optima, and scikit-learn's per-thread partial
    # sums (different low bits for 1 and 4 OpenMP threads), or BLAS's split of the whitened
    # PCA's and the distances' products, steer it to different ones unless fit_clusters fixes
    # every pool's count (clustering.CLUSTERING_THREADS). A Ray worker runs on 1 thread.
    x = np.random.default_rng(0).normal(size=(8_000, dim)).astype(np.float32)
    cfg = ClusterConfig(n_clusters=20, seed=0, pca_dim=pca_dim, whiten=bool(pca_dim), n_init=2, sample_size=8_000)
    fits = []
    for threads in (1, 4):
        with threadpoolctl.threadpool_limits(limits=threads, user_api=user_api):
            fits.append(fit_clusters(stream(x, 2048), cfg))
    np.testing.assert_array_equal(fits[0].centroids, fits[1].centroids)


def test_clustering_with_pca_and_different_seeds():
    x, truth = blobs(100)
    a = fit_clusters(stream(x, 50), ClusterConfig(n_clusters=4, seed=0, pca_dim=3, n_init=2))
    b = fit_clusters(stream(x, 50), ClusterConfig(n_clusters=4, seed=1, pca_dim=3, n_init=2))
    assert a.centroids.shape == (4, 3)
    assert same_partition(a.assign(x), truth) and same_partition(b.assign(x), truth)


def test_whitening_finds_classes_that_a_dominant_direction_hides():
    # A common direction (dim 0, as the backbone's features share one), a wide nuisance
    # direction (dim 1) and four classes at +-0.5 in dims 2-3: plain k-means cuts the nuisance.
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 400)
    signs = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]])[truth]
    x = np.column_stack([np.full(400, 10.0), rng.normal(0, 2.0, 400),
                         0.5 * signs + rng.normal(0, 0.05, (400, 2))]).astype(np.float32)
    plain = fit_clusters(stream(x, 64), ClusterConfig(n_clusters=4, seed=0, pca_dim=3, whiten=False, n_init=2))
    white = fit_clusters(stream(x, 64), ClusterConfig(n_clusters=4, seed=0, pca_dim=3, whiten=True, n_init=2))
    assert not same_partition(plain.assign(x), truth)
    assert same_partition(white.assign(x), truth)
    np.testing.assert_allclose(white.transform(x).std(axis=0), 1.0, atol=0.01)  # unit variance
    assert ClusterConfig(pca_dim=0, whiten=True) == ClusterConfig(pca_dim=0, whiten=False)  # nothing to whiten


def test_keyed_sample_is_bounded_uniform_without_replacement_and_free_of_order():
    from pipeline.semantic.keyed_sample import Keys

    theta = np.arange(1000) * (np.pi / 2 / 1000)  # unit rows: row i is recoverable from its angle
    x = np.stack([np.cos(theta), np.sin(theta)], axis=1).astype(np.float32)
    sample, seen = keyed_sample(stream(x, 37)(), 100, seed=0)
    assert seen == 1000 and sample.shape == (100, 2)
    index = np.rint(np.arctan2(sample[:, 1], sample[:, 0]) / (np.pi / 2 / 1000)).astype(int)
    assert len(set(index)) == 100  # without replacement
    assert 350 < index.mean() < 650 and index.max() > 900  # not just the first rows
    assert np.all(np.diff(index) > 0)  # plain arrays are keyed by stream position, sorted by it
    # Keyed rows (10 images of 100 segments): any order and batching gives the same sample, in
    # key order; another seed another sample.
    keys = Keys(np.array([f"img{i // 100:02d}" for i in range(1000)], object), np.arange(1000) % 100)

    def keyed(order, size):
        return lambda: ((Keys(keys.image_ids[order[s:s + size]], keys.index[order[s:s + size]]), x[order[s:s + size]])
                        for s in range(0, len(order), size))
    first, _ = keyed_sample(keyed(np.arange(1000), 64)(), 100, seed=0)
    shuffled, _ = keyed_sample(keyed(np.random.default_rng(1).permutation(1000), 7)(), 100, seed=0)
    np.testing.assert_array_equal(first, shuffled)
    other, _ = keyed_sample(keyed(np.arange(1000), 64)(), 100, seed=1)
    assert sorted(map(tuple, other)) != sorted(map(tuple, first))
    whole, _ = keyed_sample(keyed(np.arange(1000)[::-1], 13)(), 5000, seed=0)  # all of it, in key order
    np.testing.assert_array_equal(whole, l2_normalize(x))


def test_lloyd_passes_do_not_depend_on_the_order_or_batching_of_the_stream():
    from pipeline.semantic.keyed_sample import Keys

    x, _ = blobs(300)
    keys = Keys(np.array([f"img{i // 10:03d}" for i in range(len(x))], object), np.arange(len(x)) % 10)
    cfg = ClusterConfig(n_clusters=4, seed=3, sample_size=50, n_init=2, pca_dim=3)

    def keyed(order, size):
        return lambda: ((Keys(keys.image_ids[order[s:s + size]], keys.index[order[s:s + size]]), x[order[s:s + size]])
                        for s in range(0, len(order), size))
    a = fit_clusters(keyed(np.arange(len(x)), 64), cfg)
    b = fit_clusters(keyed(np.random.default_rng(2).permutation(len(x)), 1), cfg)
    assert a.n_passes > 0
    np.testing.assert_array_equal(a.centroids, b.centroids)


def test_too_few_segments_for_the_clusters_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot make 5 clusters"):
        fit_clusters(stream(np.ones((3, 4), np.float32), 2), ClusterConfig(n_clusters=5))


# ------------------------------------------------------------------------- per-image segments


def block_eigenvectors() -> np.ndarray:
    """(3, 8, 10) eigenvectors of a picture with an object block at rows 2..5, cols 3..7."""
    vec = np.full((8, 10), -1.0)
    vec[2:6, 3:8] = 1.0
    second = np.zeros((8, 10))
    second[:, :5] = 0.5
    return np.stack([np.ones((8, 10)), vec, second])


def test_segment_map_puts_the_border_segment_at_zero():
    labels = segment_map(block_eigenvectors(), SegmentsConfig(n_segments=2, n_eigenvectors=1))
    expected = np.zeros((8, 10), np.int16)
    expected[2:6, 3:8] = 1
    np.testing.assert_array_equal(labels, expected)


def test_segment_map_numbers_foreground_by_area():
    vecs = block_eigenvectors()
    vecs[1, 2:6, 3:5] = 3.0  # the block splits into 4x2 and 4x3 parts
    labels = segment_map(vecs, SegmentsConfig(n_segments=3, n_eigenvectors=1))
    assert (labels == 1).sum() == 12 and (labels == 2).sum() == 8 and labels[0, 0] == 0


def test_fiedler_background_rule_takes_every_segment_on_the_background_side():
    vecs = block_eigenvectors()
    vecs[1, 6:8, 0:2] = -3.0  # a corner patch far out on the background side
    vecs[2] = 0
    border = segment_map(vecs, SegmentsConfig(n_segments=3, n_eigenvectors=1, background="border"))
    fiedler = segment_map(vecs, SegmentsConfig(n_segments=3, n_eigenvectors=1, background="fiedler"))
    assert border.max() == 2 and (border[6:8, 0:2] > 0).all()
    assert fiedler.max() == 1 and (fiedler[6:8, 0:2] == 0).all() and (fiedler[2:6, 3:8] == 1).all()
    with pytest.raises(ValueError, match="background"):
        segment_map(vecs, SegmentsConfig(n_segments=2, background="sky"))


def test_segment_boxes_crops_and_pooled_features():
    labels = np.zeros((8, 10), np.int16)
    labels[2:6, 3:8] = 1
    labels[7, 9] = 2  # one cell: erosion removes it, its raw box stays
    geom = GridGeometry(8, 10, height=160, width=200, cell_h=14, cell_w=14, scale_y=0.7, scale_x=0.7)
    cfg = SegmentsConfig(erode=1, dilate=1)
    boxes = segment_boxes(labels, 2, geom, cfg)
    # block eroded to rows 3..4, cols 4..6, dilated back to rows 2..5 x cols 3..7 (cross shape)
    np.testing.assert_allclose(boxes[0], [3 * 20, 2 * 20, 8 * 20, 6 * 20])
    np.testing.assert_allclose(boxes[1], [9 * 20, 7 * 20, 200, 160])
    image = np.zeros((160, 200, 3), np.uint8)
    crops = segment_crops(image, boxes, 28)
    assert [c.shape for c in crops] == [(28, 28, 3)] * 2
    features = np.arange(8 * 10 * 2, dtype=np.float32).reshape(8, 10, 2)
    pooled = pooled_features(features, labels, 2)
    np.testing.assert_allclose(pooled[0], features[2:6, 3:8].reshape(-1, 2).mean(axis=0))
    np.testing.assert_allclose(pooled[1], features[7, 9])


# ------------------------------------------------------------------------- pseudo-labels


def test_label_png_round_trip_and_pixel_labels():
    segment_labels = np.array([4, 2])
    seg = np.zeros((2, 3), np.int16)
    seg[0, 1], seg[1, 2] = 1, 2
    grid = label_grid(seg, segment_labels)
    np.testing.assert_array_equal(grid, [[0, 4, 0], [0, 0, 2]])
    geom = GridGeometry(2, 3, height=20, width=30, cell_h=14, cell_w=14, scale_y=1.4, scale_x=1.4)
    pixels = label_image(grid, geom)
    assert pixels.shape == (20, 30) and pixels[0, 10] == 4 and pixels[19, 29] == 2 and pixels[0, 0] == 0
    data = encode_label_png(pixels)
    assert Image.open(__import__("io").BytesIO(data)).mode == "P"
    np.testing.assert_array_equal(decode_label_png(data), pixels)
    image = np.zeros((20, 30, 3), np.uint8)
    guided = label_image(grid, geom, image, refine="guided")
    assert guided.shape == (20, 30) and set(np.unique(guided)) <= {0, 2, 4}


def test_pixel_refinement_snaps_labels_to_the_image_edge_inside_a_cell():
    # Two classes split by an image edge at x = 18, which the 14-px cells put at x = 14.
    geom = GridGeometry(2, 3, height=28, width=42, cell_h=14, cell_w=14, scale_y=1.0, scale_x=1.0)
    grid = np.array([[1, 2, 2], [1, 2, 2]])
    image = np.zeros((28, 42, 3), np.uint8)
    image[:, :18] = 255
    truth = np.where(np.arange(42) < 18, 1, 2)[None].repeat(28, axis=0)
    cells = label_image(grid, geom)
    assert (cells != truth).sum() == 4 * 28
    for refine in ("guided", "bilateral"):
        snapped = label_image(grid, geom, image, refine)
        assert (snapped != truth).sum() < (cells != truth).sum() / 2, refine
        np.testing.assert_array_equal(snapped, label_image_from_scores(
            (np.arange(3)[:, None, None] == grid).astype(np.float32), geom, image, refine))
    with pytest.raises(ValueError, match="needs the image"):
        label_image(grid, geom, None, "bilateral")


def test_head_blended_with_the_labels_overrules_them_only_where_it_is_confident():
    grid = np.array([[1, 1, 2, 2]])
    head = np.array([[[0.05, 0.1, 0.4, 0.9]],   # background
                     [[0.9, 0.1, 0.3, 0.05]],   # class 1
                     [[0.05, 0.8, 0.3, 0.05]]])  # class 2
    blended = with_labels(head, grid, 0.3)
    np.testing.assert_allclose(blended.sum(axis=0), 1, atol=1e-6)
    # The head overrules the label in cells 1 (0.8 for 2 against 0.1 for the label 1) and 3
    # (0.9 background), not in cell 2, where it is unsure (0.4 background, 0.3 the label 2).
    np.testing.assert_array_equal(blended.argmax(axis=0), [[1, 2, 2, 0]])
    np.testing.assert_array_equal(head.argmax(axis=0), [[1, 2, 0, 0]])
    np.testing.assert_array_equal(with_labels(head, grid, 0).argmax(axis=0), head.argmax(axis=0))


def test_self_trained_head_learns_noisy_pseudo_labels_and_corrects_them():
    x, truth = blobs(200, seed=2)
    noisy = truth.copy()
    flip = np.random.default_rng(0).random(len(noisy)) < 0.15  # 15% wrong pseudo-labels
    noisy[flip] = (noisy[flip] + 1) % 4
    head = train_head(lambda: iter([(x, noisy)]), 4, SelfTrainConfig(epochs=30, lr=0.05, batch_patches=256))
    probs = predict_probabilities(head, x.reshape(20, 40, 8))
    assert probs.shape == (4, 20, 40)
    np.testing.assert_allclose(probs.sum(axis=0), 1, atol=1e-5)
    predicted = probs.reshape(4, -1).argmax(axis=0)
    assert (predicted == truth).mean() > 0.98 > (noisy == truth).mean()


def test_self_trained_head_does_not_depend_on_the_callers_torch_threads():
    # 768-d features in 4096-patch batches: torch splits the head's products across its
    # intra-op threads, and 1 and 2 threads give weights that differ in their low bits unless
    # train_head and predict_probabilities fix the count (self_training.HEAD_THREADS).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16_384, 768)).astype(np.float32)
    y = rng.integers(0, 21, len(x))
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            head = train_head(lambda: iter([(x, y)]), 21, SelfTrainConfig(epochs=1, batch_patches=4096))
            probs = predict_probabilities(head, x.reshape(128, 128, 768))
            assert torch.get_num_threads() == threads  # the caller's count is restored
            runs.append((torch.cat([p.detach().ravel() for p in head.parameters()]).numpy(), probs))
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_patch_sample_is_bounded_keeps_labels_with_their_features_and_is_seeded():
    from pipeline.semantic.self_training import patch_sample

    x = np.arange(1000, dtype=np.float32)[:, None].repeat(3, axis=1)
    y = np.arange(1000) % 7
    batches = [(x[s:s + 64], y[s:s + 64]) for s in range(0, 1000, 64)]
    sx, sy = patch_sample(iter(batches), 200, seed=1)
    assert sx.shape == (200, 3) and len(np.unique(sx[:, 0])) == 200  # without replacement
    np.testing.assert_array_equal(sy, sx[:, 0].astype(int) % 7)  # each label stays with its patch
    assert 350 < sx[:, 0].mean() < 650  # uniform over the stream, not its head
    again, _ = patch_sample(iter(batches), 200, seed=1)
    other, _ = patch_sample(iter(batches), 200, seed=2)
    np.testing.assert_array_equal(sx, again)
    assert not np.array_equal(sx, other)
    whole, _ = patch_sample(iter(batches), 5000, seed=0)  # a sample larger than the stream is all of it
    np.testing.assert_array_equal(whole, x)
    # Keyed patches (images of 100 cells): the same sample, in key order, whatever the stream's order.
    from pipeline.semantic.keyed_sample import Keys
    ids, cell = np.array([f"img{i // 100}" for i in range(1000)], object), np.arange(1000) % 100
    flipped = [(x[s:s + 64][::-1], y[s:s + 64][::-1], Keys(ids[s:s + 64][::-1], cell[s:s + 64][::-1]))
               for s in range(0, 1000, 64)][::-1]
    kx, ky = patch_sample(iter([(x, y, Keys(ids, cell))]), 200, seed=1)
    fx, fy = patch_sample(iter(flipped), 200, seed=1)
    np.testing.assert_array_equal(kx, fx)
    np.testing.assert_array_equal(ky, fy)
    assert np.all(np.diff(kx[:, 0]) > 0)  # key order is the rows' order here


def test_sampled_head_reproduces_a_planted_labelling():
    """Imbalanced planted classes (class 0 is 70% of the patches, as background is) with 15%
    wrong labels: a linear head trained on a 600-patch sample recovers the truth."""
    rng = np.random.default_rng(3)
    centres = np.eye(8)[:4] * 5
    truth = rng.choice(4, size=2000, p=[0.7, 0.1, 0.1, 0.1])
    x = (centres[truth] + rng.normal(scale=0.6, size=(2000, 8))).astype(np.float32)
    noisy = truth.copy()
    flip = rng.random(len(noisy)) < 0.15
    noisy[flip] = rng.integers(0, 4, flip.sum())
    cfg = SelfTrainConfig(epochs=40, lr=0.02, batch_patches=128, sample_patches=600)
    head = train_head(lambda: ((x[s:s + 250], noisy[s:s + 250]) for s in range(0, 2000, 250)), 4, cfg)
    predicted = predict_probabilities(head, x.reshape(40, 50, 8)).reshape(4, -1).argmax(axis=0)
    assert isinstance(head, torch.nn.Linear)
    assert (predicted == truth).mean() > 0.97 > (noisy == truth).mean()
    for c in range(1, 4):  # the minority classes too
        assert (predicted[truth == c] == c).mean() > 0.9


def test_consolidation_moves_an_images_small_clusters_to_its_nearest_large_one():
    from pipeline.semantic.image_clusters import consolidate

    # Four segments: two parts of an object near centroid 0, one near 2 (the stray part, area 1),
    # one near 1 (a second object, area 4). Columns are squared distances to centroids 0, 1, 2.
    distances = np.array([[0.1, 2.0, 1.0], [0.2, 2.0, 1.5], [0.9, 2.5, 0.3], [2.0, 0.1, 2.0]])
    areas = np.array([5, 3, 1, 4])
    np.testing.assert_array_equal(consolidate(distances, areas, 0.0), [0, 0, 2, 1])
    # Cluster 2 covers 1/13 of the foreground (< 0.2): its segment goes to its nearest kept one.
    np.testing.assert_array_equal(consolidate(distances, areas, 0.2), [0, 0, 0, 1])
    # Cluster 1 covers 4/13 (< 0.4): only cluster 0 (8/13) is kept.
    np.testing.assert_array_equal(consolidate(distances, areas, 0.4), [0, 0, 0, 0])
    # No cluster reaches the share: the largest is kept alone.
    np.testing.assert_array_equal(consolidate(distances, np.array([1, 1, 1, 1]), 0.9), [0, 0, 0, 0])
    assert consolidate(np.zeros((0, 3)), np.zeros(0), 0.2).shape == (0,)


def test_image_regions_are_the_area_weighted_mean_of_each_clusters_segments():
    from pipeline.semantic.image_clusters import image_regions

    features = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [4.0, 2.0]], np.float32)
    regions = image_regions(features, np.array([1, 3, 2, 5]), np.array([7, 2, 7, 2]))
    # cluster 2: segments 1 and 3 (areas 3, 5); cluster 7: segments 0 and 2 (areas 1, 2)
    np.testing.assert_allclose(regions, [[20 / 8, 13 / 8], [3 / 3, 2 / 3]], rtol=1e-6)


def test_segment_classes_consolidate_by_area_on_the_segment_map():
    from pipeline.semantic.clustering import SegmentClusters
    from pipeline.semantic.labelling import PseudoLabelConfig, segment_classes

    model = SegmentClusters(centroids=np.array([[1.0, 0.0], [0.0, 1.0]], np.float32),
                            pca_mean=None, pca_components=None, n_fitted=2, n_passes=0)
    segment_map = np.array([[0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 2]])  # segment 2: 1 cell of 7
    features = np.array([[1.0, 0.1], [0.3, 1.0]], np.float32)  # nearest: cluster 0, cluster 1
    np.testing.assert_array_equal(segment_classes(segment_map, features, model), [1, 2])
    np.testing.assert_array_equal(segment_classes(segment_map, features, model, 0.2), [1, 1])
    np.testing.assert_array_equal(segment_classes(segment_map, features, model, 0.1), [1, 2])
    np.testing.assert_allclose(model.distances(features)[:, 0] == model.distances(features).min(axis=1), [1, 0])
    assert PseudoLabelConfig().to_dict()["min_cluster_share"] == 0.2  # the default
    assert PseudoLabelConfig(min_cluster_share=0).to_dict()["min_cluster_share"] == 0  # recorded as set
    assert PseudoLabelConfig(min_cluster_share=0).digest("x") != PseudoLabelConfig().digest("x")
    with pytest.raises(ValueError, match="min_cluster_share"):
        PseudoLabelConfig(min_cluster_share=1.5)


def test_head_features_default_to_what_the_shards_hold():
    from pipeline.config import ExtractConfig, SegmentsConfig
    from pipeline.semantic.labelling import with_head_features

    patches = ExtractConfig(segments=SegmentsConfig(n_segments=4, features="pool", store_patches=True))
    assert with_head_features(SelfTrainConfig(features=None), patches).features == "segment"
    assert with_head_features(SelfTrainConfig(features=None), ExtractConfig(store_features=True)).features == "tokens"
    assert with_head_features(SelfTrainConfig(features="tokens"), patches).features == "tokens"


def test_options_added_later_keep_the_digests_of_runs_made_before_them_where_off():
    from pipeline.semantic.labelling import PseudoLabelConfig

    # Digests computed by the code before --min-cluster-share, --region-rounds and
    # --self-train-label-weight (commit 38fbd5f), for its defaults and a self-trained run.
    before = PseudoLabelConfig(min_cluster_share=0, region_rounds=0)
    assert before.digest("x") == "6203e35731ac741e"
    # The head's features were "tokens" then (None, "where stored", is today's default).
    trained = PseudoLabelConfig(min_cluster_share=0, region_rounds=0,
                                self_train=SelfTrainConfig(seed=4, label_weight=0, features="tokens"))
    assert trained.digest("x") == "03597421c66321f6"
    assert len({before.digest("x"), PseudoLabelConfig().digest("x"), trained.digest("x"),
                dataclasses.replace(trained, self_train=SelfTrainConfig(seed=4, features="tokens")).digest("x")}) == 4
    with pytest.raises(ValueError, match="label_weight"):
        SelfTrainConfig(label_weight=1.0)


def test_self_train_settings_reach_the_recorded_config():
    import argparse

    from jobs.cluster import OPTIONS, add_arguments, seeded
    from pipeline.semantic.labelling import PseudoLabelConfig

    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def labels(*flags):  # as jobs.cluster.main makes them: the head's seed follows the clustering's
        cfg = OPTIONS.configs(parser.parse_args(["shards", "--out", "o", *flags]))["pseudo_labels"]
        return seeded(cfg, cfg.cluster.seed)

    head = "pseudo_labels.self_train"
    cfg = labels("--self-train", "--seed", "4", "--set", f"{head}.sample_patches=5000", "--set", f"{head}.epochs=3",
                 "--set", f"{head}.features=segment", "--set", f"{head}.label_weight=0.4",
                 "--set", f"{head}.backbone=efficientnet_lite0_supervised")
    recorded = json.loads(json.dumps(cfg.to_dict()))["self_train"]
    assert recorded == {"epochs": 3, "lr": 1e-2, "weight_decay": 1e-4, "batch_patches": 4096, "seed": 4,
                        "sample_patches": 5000, "features": "segment", "label_weight": 0.4,
                        "backbone": "efficientnet_lite0_supervised"}
    assert SelfTrainConfig(**recorded) == cfg.self_train
    assert cfg.digest("x") != PseudoLabelConfig(self_train=SelfTrainConfig(seed=4)).digest("x")
    assert labels().self_train is None and labels("--self-train").self_train == SelfTrainConfig()
    with pytest.raises(SystemExit, match="balance: this setting was removed"):
        labels("--set", f"{head}.balance=true")
    with pytest.raises(SystemExit, match="backbone: must be one of"):
        labels("--set", f"{head}.backbone=resnet")
    with pytest.raises(SystemExit, match="features: must be one of"):
        labels("--set", f"{head}.features=keys")
    with pytest.raises(ValueError, match="tokens"):
        SelfTrainConfig(features="keys")


# ------------------------------------------------------------------------- ground truth


def test_coco128_label_map_and_masks():
    root = shared_data("coco128")
    label_map = read_label_map(str(root / "semantic_eval_map.json"))
    assert label_map.classes[0] == "background" and len(label_map.classes) == 13
    mask = read_class_mask(str(root / "semantic_masks" / "000000000009.png"), label_map)
    raw = np.asarray(Image.open(root / "semantic_masks" / "000000000009.png"))
    assert set(np.unique(mask)) <= set(range(13)) | {255}
    assert np.all(mask[raw == 0] == 255)  # unlabeled is ignored
    assert np.all(mask[raw == 1] == 1) if (raw == 1).any() else True


def test_label_map_rejects_classes_out_of_range(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"classes": ["bg", "a"], "map": {"3": 5}}))
    with pytest.raises(ValueError, match="outside"):
        read_label_map(str(path))


def test_voc_semantic_reads_split_and_palette_masks(tmp_path):
    root = tmp_path / "VOC2012"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000032\n2007_000039\n")
    for i in ("2007_000032", "2007_000039"):
        Image.new("RGB", (30, 20)).save(root / "JPEGImages" / f"{i}.jpg")
        mask = np.zeros((20, 30), np.uint8)
        mask[5:10, 5:10], mask[4, 4:11] = 15, 255
        img = Image.fromarray(mask, mode="P")
        img.putpalette([0] * 768)
        img.save(root / "SegmentationClass" / f"{i}.png")
    samples = voc_semantic(str(root), "val")
    assert [s.image_id for s in samples] == ["JPEGImages/2007_000032.jpg", "JPEGImages/2007_000039.jpg"]
    mask = read_class_mask(samples[0].mask_uri)
    assert set(np.unique(mask)) == {0, 15, 255}


def test_a_stored_config_with_the_removed_head_settings_loads_only_where_they_were_off(tmp_path):
    """hidden, balance, whiten, context and max_ratio (measured, not adopted: docs/semantic.md)
    are gone: a cluster.json written before holds them at their off values, loads (--config)
    and keeps its digest; one holding any other value is refused, naming it."""
    import argparse

    from jobs.cluster import OPTIONS, add_arguments
    from pipeline.semantic.labelling import PseudoLabelConfig

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = PseudoLabelConfig(self_train=SelfTrainConfig(features="tokens", sample_patches=5000))
    old = {"hidden": 0, "balance": False, "whiten": 0, "context": 0, "max_ratio": 1.0}
    stored = cfg.to_dict()
    assert not old.keys() & stored["self_train"].keys()
    stored["self_train"].update(old)
    assert cfg.digest("x") == "5fc16904ca892a0d"  # as before the removal

    def loaded(config):
        (tmp_path / "cluster.json").write_text(json.dumps({"config_digest": "d", "config": config}))
        args = parser.parse_args(["shards", "--out", "o", "--config", str(tmp_path / "cluster.json")])
        return OPTIONS.configs(args)["pseudo_labels"]

    assert loaded(stored) == cfg and loaded(stored).digest("x") == cfg.digest("x")
    for key, value in {"hidden": 256, "balance": True, "whiten": 64, "context": 1, "max_ratio": 0.93}.items():
        with pytest.raises(SystemExit, match=f"self_train.{key}: this setting was removed"):
            loaded({**stored, "self_train": {**stored["self_train"], key: value}})
