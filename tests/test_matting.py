"""Matting: trimaps, the pixel feature graph, the solvers, metrics, the job and its evaluation.

The composite: a soft-edged disc (alpha linear in the radius over an 8 px ramp) of one
texture over another, so the true alpha is known exactly. Error bounds are the measured
values (in comments) with margin.
"""
import dataclasses
import json
import os
import tracemalloc

import numpy as np
import pytest
import scipy.sparse
from PIL import Image

from kernels.feature_laplacian import interpolation_axis, pixel_feature_affinity, window_offsets
from kernels.pcg import solve_spd
from pipeline.features.geometry import GridGeometry
from pipeline.evaluation.matting_metrics import gradient_error, matting_errors, mse, sad
from pipeline.matting.alpha.spectral import spectral_layers
from pipeline.matting.config import MattingConfig
from pipeline.matting.grid import FeatureGrid
from pipeline.matting.laplacian.closed_form import colour_laplacian
from pipeline.matting.laplacian.features import feature_laplacian_rows
from pipeline.matting.laplacian.fused import fused_rows
from pipeline.matting.matte import cutout, estimate_alpha, matte
from pipeline.matting.resize import resize_trimap
from pipeline.matting.trimap import TrimapConfig, auto_trimap, read_trimap, split, trimap_from_mask

SIZE = 112  # 8 x 8 cells of 14 px


def composite(size: int = SIZE, radius: float = 30.0, ramp: float = 8.0):
    """-> (uint8 (size, size, 3) image, (size, size) true alpha)."""
    y, x = np.mgrid[:size, :size].astype(float)
    r = np.hypot(y - size / 2 + 0.5, x - size / 2 + 0.5)
    alpha = np.clip((radius - r) / ramp + 0.5, 0, 1)
    fg = np.stack([0.75 + 0.2 * np.sin(x / 3.0), 0.35 + 0.15 * np.cos(y / 4.0), 0.2 + 0 * x], -1)
    bg = np.stack([0.15 + 0 * x, 0.3 + 0.2 * np.sin((x + y) / 5.0), 0.7 + 0.2 * np.cos(x / 6.0)], -1)
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    return np.round(image * 255).astype(np.uint8), alpha


@pytest.fixture(scope="module")
def scene():
    image, alpha = composite()
    trimap = trimap_from_mask(alpha > 0.5, 7, 7)  # band r in [23, 37], the ramp is [26, 34]
    return image, alpha, trimap


@pytest.fixture(scope="module")
def grid(scene):
    """Synthetic 'semantic' features: the cell-averaged true alpha and its complement, noisy."""
    _, alpha, _ = scene
    cells = alpha.reshape(8, 14, 8, 14).mean(axis=(1, 3))
    noise = 0.05 * np.random.default_rng(0).standard_normal((8, 8, 2))
    features = (np.stack([cells, 1 - cells], -1) + noise).astype(np.float32)
    return FeatureGrid(features, GridGeometry(8, 8, SIZE, SIZE, 14, 14, 1.0, 1.0))


def unknown_errors(alpha, truth, trimap):
    region = split(trimap)[2]
    return sad(alpha, truth, region), mse(alpha, truth, region)


# ---------------------------------------------------------------------------------- trimaps


def test_trimap_widths_are_euclidean_distances():
    mask = np.zeros((60, 80), bool)
    mask[20:40, 20:60] = True
    t = trimap_from_mask(mask, fg_width=3, bg_width=5)
    fg, bg, unknown = split(t)
    # Along the middle row: 3 mask pixels inside the edge and 5 outside it are unknown.
    row = unknown[30]
    assert row[:15].sum() == 0 and row[15:20].all() and row[20:23].all() and fg[30, 23]
    assert fg[30, 56] and row[57:60].all() and row[60:65].all() and bg[30, 65] and not row[65:].any()
    assert row.sum() == 2 * (3 + 5)
    # A corner is rounded (a disc), not a square: the pixel 4 px out each way (distance 5.7 > 5,
    # although a 3 x 3 dilation reaches it in 4 steps) is background, 3 px out (4.2) unknown.
    assert bg[16, 16] and unknown[17, 17]
    # Widths wider than the object keep its innermost pixels as sure foreground.
    thin = trimap_from_mask(mask, fg_width=50, bg_width=1)
    assert (thin == 1).any() and (thin == 0).any()
    with pytest.raises(ValueError):
        trimap_from_mask(np.zeros((5, 5), bool), 1, 1)


def test_read_trimap_thresholds_files_and_arrays(tmp_path):
    values = np.array([[0, 20, 128], [200, 240, 255]], np.uint8)
    Image.fromarray(values).save(tmp_path / "t.png")
    expected = np.array([[0, 0, 0.5], [0.5, 1, 1]])
    np.testing.assert_array_equal(read_trimap(str(tmp_path / "t.png")), expected)
    np.testing.assert_array_equal(read_trimap(np.stack([values] * 3, -1)), expected)


def test_auto_trimap_from_the_fiedler_vector():
    geom = GridGeometry(6, 8, 84, 112, 14, 14, 1.0, 1.0)
    vec = -np.ones((6, 8))
    vec[2:4, 3:6] = 2.0  # the object: 2 x 3 cells = pixels rows 28..55, cols 42..83
    vec[0, 0] = 1.5  # a separate positive speck: not the largest component
    eig = np.stack([np.ones((6, 8)), vec])
    t = auto_trimap(eig, geom, TrimapConfig(fg_width=0.5, bg_width=1.0))  # 7 px in, 14 px out
    fg, bg, unknown = split(t)
    assert fg[42, 63] and not fg[:, :49].any() and not fg[:35].any()
    assert unknown[42, 42 - 14] and bg[42, 42 - 15] and bg[5, 5]
    t_px = auto_trimap(eig, geom, TrimapConfig(fg_width=7, bg_width=14, unit="pixels"))
    np.testing.assert_array_equal(t, t_px)
    with pytest.raises(ValueError, match="no object"):
        auto_trimap(np.stack([np.ones((6, 8)), np.zeros((6, 8))]), geom)


# ----------------------------------------------------------------------- feature graph


def test_pixel_feature_affinity_is_the_cosine_of_interpolated_features():
    rng = np.random.default_rng(1)
    features = rng.standard_normal((3, 4, 5)).astype(np.float32)
    h, w = 20, 30
    ay, ax = interpolation_axis(h, 3, 7.0, 1.0), interpolation_axis(w, 4, 7.5, 1.0)
    # Explicit per-pixel features by the same bilinear weights.
    Py = np.zeros((h, 3))
    Py[np.arange(h), ay.lo] += 1 - ay.frac
    Py[np.arange(h), ay.hi] += ay.frac
    Px = np.zeros((w, 4))
    Px[np.arange(w), ax.lo] += 1 - ax.frac
    Px[np.arange(w), ax.hi] += ax.frac
    f = np.einsum("yi,xj,ijc->yxc", Py, Px, features).reshape(h * w, 5)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    dense = np.maximum(f @ f.T, 0) ** 2
    offsets = window_offsets(1, 3)
    W = pixel_feature_affinity(features, ay, ax, offsets, power=2.0)
    assert scipy.sparse.issparse(W) and W.shape == (h * w, h * w)
    coo = W.tocoo()
    np.testing.assert_allclose(coo.data, dense[coo.row, coo.col], rtol=1e-4, atol=1e-5)
    dy, dx = np.divmod(coo.col, w)[0] - coo.row // w, coo.col % w - coo.row % w
    assert set(zip(dy.tolist(), dx.tolist())) == set(offsets)
    assert abs(W - W.T).max() < 1e-5
    # Rows of a subset are the same rows.
    rows = np.array([0, 17, 311, 599])
    np.testing.assert_allclose(pixel_feature_affinity(features, ay, ax, offsets, rows=rows, power=2.0).toarray(),
                               W[rows].toarray(), rtol=1e-6)


def test_fused_system_is_sparse_and_memory_bounded(scene, grid):
    """A 560 x 560 image (N = 313,600: a dense N x N float64 would be 787 GB) builds its fused
    rows in bounded memory and as sparse matrices with at most stencil-many entries per row."""
    image, _, _ = scene
    big = np.asarray(Image.fromarray(image).resize((560, 560), Image.Resampling.BILINEAR))
    mask = np.zeros((560, 560), bool)
    mask[100:460, 100:460] = True
    trimap = trimap_from_mask(mask, 20, 20)
    cfg = MattingConfig(feature_weight=0.1)
    big_grid = grid.at_size(560, 560)
    tracemalloc.start()
    L, rows, weight = fused_rows(big.astype(np.float64) / 255, trimap, cfg, big_grid)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert scipy.sparse.issparse(L) and L.format == "csr" and weight > 0
    n = 560 * 560
    assert L.shape == (rows.size, n)
    colour_stencil = (4 * cfg.cf_radius + 1) ** 2
    assert L.nnz <= rows.size * (colour_stencil + len(window_offsets(cfg.feature_radius, 2)))
    # Measured 0.21 GB (~650 bytes per pixel): pymatting's cf_laplacian fills 25 values and
    # indices for every pixel, known or not; the feature rows are built in chunks.
    assert peak < 0.4e9
    Lf = feature_laplacian_rows(big_grid, cfg, rows[:1000])
    assert scipy.sparse.issparse(Lf) and abs(Lf.sum(axis=1)).max() < 1e-4  # D - W rows sum to 0


# ---------------------------------------------------------------------------------- solvers


def test_trimap_mode_recovers_the_composite_and_equals_pymatting(scene):
    from pymatting import estimate_alpha_cf

    image, truth, trimap = scene
    result = matte(image, MattingConfig(device="cpu"), trimap=trimap)  # ichol, as pymatting
    s, m = unknown_errors(result.alpha, truth, trimap)
    assert s < 0.10 and m < 0.004  # measured SAD 0.072, MSE 0.0022 (2,532 unknown pixels)
    guess = unknown_errors(np.full_like(truth, 0.5), truth, trimap)
    assert s < guess[0] / 5
    np.testing.assert_allclose(result.alpha, estimate_alpha_cf(image / 255.0, trimap), atol=1e-5)
    assert result.foreground.shape == image.shape and result.info["iterations"] > 0
    fg, bg, _ = split(trimap)
    assert (result.alpha[fg] == 1).all() and (result.alpha[bg] == 0).all()
    rgba = cutout(result.foreground, result.alpha)
    assert rgba.dtype == np.uint8 and rgba.shape == (SIZE, SIZE, 4)


def test_fusion_mode_stays_close_to_the_composite(scene, grid):
    image, truth, trimap = scene
    alpha, _, info = estimate_alpha(image, trimap, MattingConfig(feature_weight=0.1), grid)
    s, m = unknown_errors(alpha, truth, trimap)
    # Measured SAD 0.318, MSE 0.021: the feature term is a smoothness prior at the scale of a
    # cell, so it widens the 8 px ramp toward the 14 px band (colour only: 0.072).
    assert s < 0.45 and m < 0.03 and info["feature_lambda"] > 0
    assert s < unknown_errors(np.full_like(truth, 0.5), truth, trimap)[0] / 2
    with pytest.raises(ValueError, match="FeatureGrid"):
        estimate_alpha(image, trimap, MattingConfig(feature_weight=0.1))


def test_jacobi_and_ichol_solve_the_same_system(scene):
    image, truth, trimap = scene
    a, _, info_i = estimate_alpha(image, trimap, MattingConfig(preconditioner="ichol"))
    b, _, info_j = estimate_alpha(image, trimap, MattingConfig(preconditioner="jacobi"))
    assert info_i["iterations"] < info_j["iterations"]
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_spectral_layers_give_the_composite(scene):
    image, truth, trimap = scene
    cfg = MattingConfig(solver="spectral", spectral_max_side=56, n_layers=10)
    alpha, layers, info = estimate_alpha(image, trimap, cfg)
    assert layers.shape == (10, 56, 56) and alpha.shape == truth.shape
    assert np.all(np.diff(info["eigenvalues"]) >= -1e-12) and abs(info["eigenvalues"][0]) < 1e-6
    s, m = unknown_errors(alpha, truth, trimap)
    assert s < 0.25 and m < 0.015  # measured SAD 0.179, MSE 0.0101


def test_max_side_solves_small_and_returns_full_size(scene):
    image, truth, trimap = scene
    alpha, _, info = estimate_alpha(image, trimap, MattingConfig(max_side=56))
    assert info["work_size"] == [56, 56] and alpha.shape == truth.shape
    fg, bg, _ = split(trimap)
    assert (alpha[fg] == 1).all() and (alpha[bg] == 0).all()
    s, m = unknown_errors(alpha, truth, trimap)
    assert s < 0.16 and m < 0.007  # measured SAD 0.121, MSE 0.0044
    # Downscaled trimaps never lose unknown pixels to nearest-neighbour sampling.
    small = resize_trimap(trimap, (56, 56))
    big_unknown = np.asarray(Image.fromarray(split(small)[2]).resize((SIZE, SIZE), Image.Resampling.NEAREST))
    assert (big_unknown | ~split(trimap)[2]).all()


def test_cpu_cg_solves_an_spd_system():
    rng = np.random.default_rng(2)
    B = scipy.sparse.random(300, 300, density=0.02, random_state=3)
    A = (B @ B.T + scipy.sparse.identity(300)).tocsr()
    b = rng.standard_normal(300)
    for pre in ("ichol", "jacobi"):
        res = solve_spd(A, b, pre, rtol=1e-10)
        np.testing.assert_allclose(A @ res.x, b, atol=1e-7)
    with pytest.raises(RuntimeError):
        solve_spd(A, b, "jacobi", rtol=1e-12, maxiter=2)


def _has_gpu() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="needs CuPy and a CUDA GPU")
def test_gpu_cg_matches_cpu(scene, grid):
    image, _, trimap = scene
    for fw in (0.0, 0.1):
        cpu, _, _ = estimate_alpha(image, trimap, MattingConfig(feature_weight=fw, preconditioner="jacobi",
                                                                 device="cpu"), grid)
        gpu, _, info = estimate_alpha(image, trimap, MattingConfig(feature_weight=fw, device="cuda"), grid)
        assert info["preconditioner"] == "jacobi"
        np.testing.assert_allclose(gpu, cpu, atol=1e-4)


# ---------------------------------------------------------------------------------- metrics


def test_metrics_on_hand_computable_cases():
    gt = np.zeros((20, 30))
    alpha = gt.copy()
    alpha[5:10, 5:15] = 0.5  # 50 pixels off by 0.5
    assert sad(alpha, gt) == pytest.approx(50 * 0.5 / 1000)
    assert mse(alpha, gt) == pytest.approx(50 * 0.25 / 600)
    region = np.zeros_like(gt, bool)
    region[5:10, 5:10] = True  # 25 of them
    assert sad(alpha, gt, region) == pytest.approx(25 * 0.5 / 1000)
    assert mse(alpha, gt, region) == pytest.approx(0.25)
    assert gradient_error(alpha, alpha) == 0 and gradient_error(np.full_like(gt, 0.3), gt) == 0
    # Gaussian-derivative filters give a linear ramp its exact slope away from the borders:
    # grad error = pixels x slope^2 / 1000.
    ramp = np.tile(np.arange(30) * 0.01, (20, 1))
    inner = np.zeros_like(gt, bool)
    inner[8:12, 8:22] = True
    # (to 1e-4: SciPy truncates the Gaussian at 4 sigma)
    assert gradient_error(ramp, gt, inner) == pytest.approx(56 * 0.01 ** 2 / 1000, rel=1e-3)
    assert set(matting_errors(alpha, gt)) == {"sad", "mse", "grad"}
    with pytest.raises(ValueError):
        sad(alpha, gt[:10])


# ---------------------------------------------------------------------- job and evaluation


def _write_benchmark(root, n=2):
    for sub in ("images", "alpha", "trimaps"):
        os.makedirs(root / sub, exist_ok=True)
    for i in range(n):
        image, truth = composite(radius=26.0 + 3 * i)
        trimap = trimap_from_mask(truth > 0.5, 7, 7)
        Image.fromarray(image).save(root / "images" / f"im{i}.png")
        Image.fromarray(np.stack([np.round(truth * 255).astype(np.uint8)] * 3, -1)).save(root / "alpha" / f"im{i}.png")
        Image.fromarray(np.round(trimap * 255).astype(np.uint8)).save(root / "trimaps" / f"im{i}.png")


def test_evaluate_matting_against_pymatting_baseline(tmp_path):
    from jobs.matte import evaluate_matting

    _write_benchmark(tmp_path)
    args = (str(tmp_path / "images"), str(tmp_path / "alpha"), str(tmp_path / "trimaps"))
    ours = evaluate_matting(*args, cfg=MattingConfig(estimate_foreground=False), per_image=True)
    base = evaluate_matting(*args, mode="pymatting_cf")
    for report in (ours, base):
        assert {"sad", "mse", "grad", "n_images", "n_failed", "seconds_per_image", "config"} <= set(report)
        assert report["n_images"] == 2 and report["n_failed"] == 0 and report["region"] == "trimap_unknown"
    assert ours["mode"] == "trimap" and ours["config"]["solver"] == "cg"
    assert ours["sad"] == pytest.approx(base["sad"], abs=1e-4) and ours["sad"] < 0.15
    assert len(ours["per_image"]) == 2
    with pytest.raises(ValueError):
        evaluate_matting(str(tmp_path / "images"), str(tmp_path / "alpha"), mode="trimap")


def test_cli_writes_alpha_and_cutout_with_max_side(tmp_path):
    import pyarrow.parquet as pq

    from jobs.matte import cli

    _write_benchmark(tmp_path, n=2)
    (tmp_path / "images" / "bad.png").write_text("not an image")  # an error row, the others go on
    (tmp_path / "trimaps" / "bad.png").write_bytes((tmp_path / "trimaps" / "im0.png").read_bytes())
    (tmp_path / "trimaps" / "im1.png").write_text("not a trimap")  # its image fails, stage trimap
    out = tmp_path / "out"
    run = [str(tmp_path / "images"), "--out", str(out), "--trimap", str(tmp_path / "trimaps"),
           "--max-side", "64", "--local"]
    assert cli(run) == 0  # 2 of 3 failed: within the default --max-failures
    alpha = np.asarray(Image.open(out / "im0.alpha.png"))
    rgba = Image.open(out / "im0.rgba.png")
    assert alpha.shape == (SIZE, SIZE) and rgba.mode == "RGBA" and rgba.size == (SIZE, SIZE)
    np.testing.assert_array_equal(np.asarray(rgba)[..., 3], alpha)
    assert not (out / "im0.trimap.png").exists()  # given trimaps are not written back
    rows = pq.read_table(out / "mattes").to_pylist()
    assert [r["image_id"] for r in rows] == ["im0.png"] and rows[0]["trimap"] is None
    assert rows[0]["trimap_uri"].endswith("trimaps/im0.png")
    assert json.loads(rows[0]["info"])["work_size"] == [64, 64]
    errors = {e["image_id"]: e for e in pq.read_table(out / "errors").to_pylist()}
    assert errors["bad.png"]["stage"] == "decode" and errors["im1.png"]["stage"] == "trimap"
    (summary_file,) = (out / "runs").iterdir()
    summary = json.loads(summary_file.read_text())
    assert (summary["processed"], summary["failed"], summary["status"]) == (1, 2, "ok")
    assert summary["config"]["max_side"] == 64 and summary["mode"] == "in-process"
    assert summary["files_written"] == 2 and "seconds_solve" in summary["seconds_per_image"]
    # A rerun matte nothing and rewrites only a file that went missing.
    (out / "im0.rgba.png").unlink()
    assert cli(run + ["--summary", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert (again["skipped"], again["processed"], again["files_written"]) == (3, 0, 1)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "im0.rgba.png")), np.asarray(rgba))
    assert len(list((out / "runs").iterdir())) == 1
    assert cli(["evaluate", "--images", str(tmp_path / "images"), "--alpha", str(tmp_path / "alpha"),
                "--trimaps", str(tmp_path / "trimaps"), "--json", str(tmp_path / "m.json")]) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["n_images"] == 1 and report["n_failed"] == 1  # im1's trimap is unreadable


def test_matte_digest_file_stems_and_config_round_trip():
    from pipeline.batch.matter import file_stem
    from pipeline.matting.config import matte_digest

    cfg = MattingConfig(max_side=64, trimap=TrimapConfig(threshold=0.1))
    assert MattingConfig.from_dict(json.loads(cfg.to_json())) == cfg
    # Where CG runs is not in the digest; the method and given trimaps' source are.
    assert cfg.digest() == dataclasses.replace(cfg, device="cuda").digest() == matte_digest(cfg)
    assert cfg.digest() != dataclasses.replace(cfg, max_side=128).digest()
    assert len({matte_digest(cfg), matte_digest(cfg, ["a"]), matte_digest(cfg, ["b"])}) == 3
    assert file_stem("cat.jpg") == "cat" and file_stem("train/x.y.png") == "train/x.y"
    assert file_stem("s3://bucket/a/b.jpg") == "b" and file_stem("/abs/c.png") == "c"
    assert file_stem("../up/d.jpg") == "d"


@pytest.mark.parametrize("flags, field", [
    (["--long-side", "-5"], "backbone.long_side"),
    (["--backbone", "nosuch"], "unknown backbone 'nosuch'"),
    (["--set", "matte.trimap.threshold=abc"], "matte.trimap.threshold"),
    (["--batch-size", "0"], "runtime.batch_size"),
    (["--max-failures", "5x"], "runtime.max_failures"),
])
def test_matte_bad_value_exits_2_with_one_line_and_leaves_out_untouched(tmp_path, capsys, flags, field):
    from jobs.cli import main
    from tests.conftest import SAMPLES

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        main(["matte", str(SAMPLES), "--out", str(out), "--local", *flags])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and field in err[0], err
    assert not out.exists()


def test_automatic_mode_on_a_photo(sample_image, offline_weights):
    from pipeline.features.backbones import create_backbone

    backbone = create_backbone("dinov2_vits14_offline", weights=str(offline_weights), resize=448)
    result = matte(sample_image, MattingConfig(max_side=200), backbone)
    fg, bg, unknown = split(result.trimap)
    assert fg.any() and bg.any() and unknown.any() and result.trimap.shape == sample_image.shape[:2]
    assert result.alpha.shape == sample_image.shape[:2] and 0 <= result.alpha.min() <= result.alpha.max() <= 1
    # The cat fills the middle of the photo: the automatic foreground lies there.
    h, w = fg.shape
    assert result.alpha[h // 3:2 * h // 3, w // 3:2 * w // 3].mean() > 0.5


def test_cli_evaluate_matting_routes_to_matting(tmp_path):
    from jobs.cli import main
    from tests.conftest import shared_data

    root = shared_data("alphamatting")
    out = tmp_path / "m.json"
    assert main(["evaluate", "matting", "--images", str(root / "images"), "--alpha", str(root / "alpha"),
                 "--trimaps", str(root / "trimap1"), "--limit", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["n_images"] == 1 and report["n_failed"] == 0
    assert 0 < report["sad"] < 20 and 0 <= report["mse"] < 0.05


def test_spectral_layers_of_the_knn_graph_give_the_composite(scene):
    image, truth, trimap = scene
    cfg = MattingConfig(solver="spectral", spectral_graph="knn", spectral_max_side=56, n_layers=10)
    alpha, layers, info = estimate_alpha(image, trimap, cfg)
    assert layers.shape == (10, 56, 56)
    assert np.all(np.diff(info["eigenvalues"]) >= -1e-12) and info["eigenvalues"][0] == 0
    s, m = unknown_errors(alpha, truth, trimap)
    assert s < 0.16 and m < 0.005  # measured SAD 0.122, MSE 0.0035 (closed-form layers: 0.179, 0.0101)


def test_knn_layers_with_the_feature_graph(scene, grid):
    image, truth, trimap = scene
    cfg = MattingConfig(solver="spectral", spectral_graph="knn", spectral_max_side=56, n_layers=10,
                        feature_weight=0.1)
    alpha, layers, info = estimate_alpha(image, trimap, cfg, grid)
    plain = estimate_alpha(image, trimap, dataclasses.replace(cfg, feature_weight=0.0))[2]["eigenvalues"]
    assert info["eigenvalues"] != plain  # the feature term is in the graph
    s, m = unknown_errors(alpha, truth, trimap)
    assert s < 0.2 and m < 0.007  # measured SAD 0.152, MSE 0.0051 (without the feature term 0.122)
    with pytest.raises(ValueError, match="FeatureGrid"):
        estimate_alpha(image, trimap, cfg)


def test_closed_form_layers_are_eigenpairs_of_the_laplacian(scene):
    image = scene[0][::4, ::4].astype(np.float64) / 255  # 56 x 56
    cfg = MattingConfig(solver="spectral", n_layers=6)
    layers, values = spectral_layers(image, cfg)
    dense = np.linalg.eigvalsh(colour_laplacian(image, cfg).toarray())
    np.testing.assert_allclose(values, dense[:6], atol=1e-9)
    with pytest.raises(ValueError, match="spectral_graph"):
        spectral_layers(image, MattingConfig(spectral_graph="nope"))
