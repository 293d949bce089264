"""Test-time averaging over a second scale and the keys + tokens features: the resampling onto
the first scale's cells, the backbone's averaged features, and the recorded config.

Real offline weights (conftest.offline_weights), small inputs to keep the forward passes short.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from jobs.extract import add_extract_options, configs_from_args
from pipeline.config import BackboneConfig, ExtractConfig
from pipeline.features.backbones import create_backbone
from pipeline.features.geometry import resized_size
from pipeline.features.scale_average import to_first_grid

P = 14


def _centres(n_cells: int, resized: int, original: int) -> np.ndarray:
    """Original-image coordinate of each cell centre along one axis."""
    return (np.arange(n_cells) + 0.5) * P * original / resized


def test_resampling_is_exact_on_a_linear_ramp_and_the_identity_at_equal_sizes():
    H, W = 300, 450  # original image; the two scales crop different bottom/right strips
    first, second = resized_size(H, W, 224), resized_size(H, W, 301)
    g1 = (first[0] // P, first[1] // P)
    g2 = (second[0] // P, second[1] // P)
    assert g1 == (10, 16) and g2 == (14, 21)
    # Features = the original-pixel coordinates of each second-scale cell centre (a linear
    # function, which bilinear interpolation reproduces exactly away from the clamped edges).
    ys, xs = _centres(g2[0], second[0], H), _centres(g2[1], second[1], W)
    f2 = torch.from_numpy(np.stack(np.meshgrid(ys, xs, indexing="ij"), -1))
    got = to_first_grid(f2, second, first, g1).numpy()
    assert got.shape == (*g1, 2)
    want_y, want_x = _centres(g1[0], first[0], H), _centres(g1[1], first[1], W)
    inside_y = (want_y >= ys[0]) & (want_y <= ys[-1])
    inside_x = (want_x >= xs[0]) & (want_x <= xs[-1])
    assert inside_y.sum() >= g1[0] - 1 and inside_x.sum() >= g1[1] - 1
    np.testing.assert_allclose(got[inside_y, 0, 0], want_y[inside_y], atol=1e-4)
    np.testing.assert_allclose(got[0, inside_x, 1], want_x[inside_x], atol=1e-4)
    # Cells past the second grid's last centre take its edge value (clamped, not extrapolated).
    np.testing.assert_allclose(got[~inside_y, 0, 0], np.clip(want_y[~inside_y], ys[0], ys[-1]), atol=1e-4)
    same = torch.randn(*g1, 5)
    assert torch.equal(to_first_grid(same, first, first, g1), same)


@pytest.fixture(scope="module")
def weights(offline_weights) -> str:
    return str(offline_weights)


def _crop(image: np.ndarray, long_side: int) -> np.ndarray:
    h, w = resized_size(*image.shape[:2], long_side)
    out = np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))
    return np.ascontiguousarray(out[:h // P * P, :w // P * P])


def test_second_scale_is_the_mean_with_the_resampled_second_scale(weights, sample_image):
    plain = create_backbone(weights=weights, resize=224)
    at_280 = create_backbone(weights=weights, resize=280)
    same = create_backbone(weights=weights, resize=224, second_long_side=224)
    two = create_backbone(weights=weights, resize=224, second_long_side=280)
    f1 = plain([sample_image])[0].features
    np.testing.assert_allclose(same([sample_image])[0].features, f1, atol=1e-6, rtol=0)
    out = two([sample_image])[0]
    assert out.features.shape == f1.shape and out.input_hw == plain([sample_image])[0].input_hw
    hw = sample_image.shape[:2]
    f2 = to_first_grid(torch.from_numpy(at_280([sample_image])[0].features), resized_size(*hw, 280),
                       resized_size(*hw, 224), f1.shape[:2]).numpy()
    np.testing.assert_allclose(out.features, (f1 + f2) / 2, atol=2e-3, rtol=1e-3)
    assert np.abs(f2 - f1).mean() > 0.05 * np.abs(f1).mean()  # the second scale adds something

    def cos(a, b):
        return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)

    # The resampled cells sit on the first scale's cells: each resembles its own cell more than
    # the neighbouring one (a grid shifted or transposed by the resampling would not).
    assert cos(f1, f2).mean() > cos(f1[:, 1:], f2[:, :-1]).mean() + 0.02
    assert cos(f1, f2).mean() > cos(f1[1:], f2[:-1]).mean() + 0.02


def test_second_scale_batches_images_whose_second_crops_differ(weights, sample_image):
    # Same crop at 224 (10 x 16 cells from 300 and 305 rows), 13 and 14 rows of cells at 290.
    a = np.ascontiguousarray(np.asarray(Image.fromarray(sample_image).resize((448, 300))))
    b = np.ascontiguousarray(np.asarray(Image.fromarray(sample_image).resize((448, 305)))[::-1])
    assert _crop(a, 224).shape == _crop(b, 224).shape and _crop(a, 290).shape != _crop(b, 290).shape
    two = create_backbone(weights=weights, resize=224, second_long_side=290, flip_average=True)
    together = two([a, b])
    for image, out in zip((a, b), together):
        np.testing.assert_allclose(out.features, two([image])[0].features, atol=1e-4, rtol=1e-4)


def test_keys_and_tokens_concatenate_at_unit_norm_and_average_the_cosines(weights, sample_image):
    keys = create_backbone(weights=weights, resize=224, features="keys")([sample_image])[0].features
    tokens = create_backbone(weights=weights, resize=224, features="tokens")([sample_image])[0].features
    bb = create_backbone(weights=weights, resize=224, features="keys+tokens")
    both = bb([sample_image])[0].features
    assert both.shape == (*keys.shape[:2], 768) and bb.patch_feature_dim == 768 and bb.feature_dim == 384

    def unit(f):
        return f / np.linalg.norm(f, axis=-1, keepdims=True)

    np.testing.assert_allclose(both, np.concatenate([unit(keys), unit(tokens)], -1) / 2 ** 0.5, atol=1e-4)
    k, t, kt = (unit(f).reshape(-1, f.shape[-1]) for f in (keys, tokens, both))
    np.testing.assert_allclose(kt @ kt.T, (k @ k.T + t @ t.T) / 2, atol=1e-4)
    assert np.abs(k @ k.T - t @ t.T).mean() > 0.05  # the two halves disagree: the mean is news


def test_options_round_trip_through_the_recorded_config_and_the_cli():
    cfg = ExtractConfig(backbone=BackboneConfig(features="keys+tokens", flip_average=True, second_long_side=518))
    assert ExtractConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert json.loads(cfg.to_json())["backbone"]["second_long_side"] == 518
    assert "second_long_side" not in ExtractConfig().to_dict()["backbone"]
    assert ExtractConfig().digest() == "9efb740a015f7119"  # existing shards keep their digest
    assert len({ExtractConfig(backbone=BackboneConfig(second_long_side=s)).digest() for s in (448, 518)}) == 2
    parser = argparse.ArgumentParser()
    add_extract_options(parser)
    parsed, _ = configs_from_args(parser.parse_args(["--second-long-side", "518", "--features", "keys+tokens"]))
    assert parsed.backbone == BackboneConfig(features="keys+tokens", second_long_side=518)
    assert configs_from_args(parser.parse_args([]))[0] == ExtractConfig()
    with pytest.raises(SystemExit):
        parser.parse_args(["--features", "values"])


def test_extractor_rows_carry_both_options(weights, sample_image, tmp_path):
    from pipeline.batch.extractor import SpectralExtractor
    from pipeline.io.schema import features_of
    from pipeline.io.sources import ImageRef

    Image.fromarray(sample_image).save(tmp_path / "cat.png")
    both = BackboneConfig(weights=weights, features="keys+tokens", long_side=224, second_long_side=280)
    cfg = ExtractConfig(backbone=both, store_features=True)
    rows, errors = SpectralExtractor(cfg)([ImageRef("cat.png", str(tmp_path / "cat.png"))])
    assert not errors and rows[0]["config_digest"] == cfg.digest()
    features = features_of(rows[0])
    assert features.shape[-1] == 768 and features.shape[:2] == (rows[0]["grid_h"], rows[0]["grid_w"])
    direct = create_backbone(weights=weights, features="keys+tokens", resize=224, second_long_side=280)
    np.testing.assert_allclose(features, direct([sample_image])[0].features, atol=1e-4)
