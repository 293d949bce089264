"""Soft foreground layers at full resolution: the paper's fused Laplacian, solved for alpha.

    L = L_colour + lambda' L_feature

L_colour is pymatting's closed-form matting Laplacian (Levin et al. 2008, `cf_laplacian`).
L_feature = D - W is the patch feature affinity brought to pixels and kept sparse
(kernels.feature_laplacian: bilinearly interpolated ViT features, each pixel linked to the
pixels of a small dilated window, weight max(cos, 0) ** power). lambda' = feature_weight x
(mean diagonal of L_colour / mean degree of W) over the unknown pixels, so feature_weight = 1
means "as strong as the colour term" whatever the image; 0 is plain closed-form matting.

Alpha comes from one of two solvers:
  "cg"        the constrained quadratic problem min a^T L a with a fixed on the trimap's known
              pixels: L_UU a_U = -L_UK a_K (pymatting's estimate_alpha_cf formulation, exact
              constraints), by preconditioned CG, on CuPy when asked (kernels.pcg).
  "spectral"  spectral matting: the k smallest eigenvectors of L (the soft layers; Levin,
              Rav-Acha and Lischinski 2008 show mattes lie near their span) computed on the
              image scaled to `spectral_max_side`, alpha = the combination of layers that
              best fits the known pixels, upsampled. The layers come from the closed-form
              Laplacian (shift-invert eigsh) or, with spectral_graph="knn", from the KNN colour
              graph by the extraction's sparse eigensolver (no factorisation).
The trimap is given (trimap mode) or made from the Fiedler vector (automatic mode,
pipeline.matting.trimap). Everything is sparse: memory is O(pixels x stencil), never pixels^2.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import scipy.sparse
from PIL import Image

from kernels.feature_laplacian import interpolation_axis, laplacian_rows, pixel_feature_affinity, window_offsets
from kernels.pcg import PRECONDITIONERS, solve_spd
from pipeline.config import BackboneConfig, EigenConfig, ExtractConfig, canonical_json, digest_of
from pipeline.features.geometry import GridGeometry, resized_size
from pipeline.matting.trimap import TrimapConfig, auto_trimap, cell_pixels, split

SOLVERS = ("cg", "spectral")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class MattingConfig:
    # Closed-form colour Laplacian (pymatting defaults).
    cf_epsilon: float = 1e-7
    cf_radius: int = 1
    # Fusion: weight of the feature Laplacian relative to the colour one (0 = colour only).
    feature_weight: float = 0.0
    feature_radius: int = 1
    # Stencil spacing in patch cells: interpolated features change little from one pixel to
    # the next, so links must span part of a cell to see a semantic edge at all.
    feature_stride: float = 0.25
    feature_power: float = 1.0
    solver: str = "cg"
    preconditioner: str = "auto"  # kernels.pcg: ichol on CPU, jacobi on GPU
    rtol: float = 1e-7
    maxiter: int = 10000
    device: str = "auto"  # where CG runs: "cpu", "cuda" (CuPy) or "auto" (CUDA when CuPy sees a GPU)
    # Spectral matting: number of layers and the long side they are computed at. 400 px beat
    # 200 px on both halves of alphamatting.com (Trimap1 SAD 8.05 / 10.83 against 9.48 / 11.92,
    # tune / check; docs/matting.md) for 5-15x the seconds and 4x the memory.
    n_layers: int = 20
    spectral_max_side: int = 400
    # The graph the layers are eigenvectors of (LAYER_GRAPHS): "cf" the closed-form matting
    # Laplacian (Levin et al.), "knn" the KNN colour graph's normalised Laplacian (the paper's).
    spectral_graph: str = "cf"
    # Downscale so the long side is at most this before solving; alpha is upsampled back
    # and the full-resolution trimap's known pixels are kept. None = full resolution.
    max_side: Optional[int] = None
    estimate_foreground: bool = True
    trimap: TrimapConfig = field(default_factory=TrimapConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # Decompression-bomb guard of the job's decoder: images with more pixels fail unread.
    max_pixels: int = 64_000_000

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    def digest(self) -> str:
        """What keys the matte job's rows in automatic mode (same digest = same work, skipped):
        matte_record's hash."""
        return matte_digest(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MattingConfig":
        data = dict(data)
        return cls(trimap=TrimapConfig(**data.pop("trimap", {})), backbone=BackboneConfig(**data.pop("backbone", {})),
                   **data)


def matte_record(cfg: MattingConfig, trimaps: list[str] | None = None) -> dict:
    """What a matte run's digest hashes (and its shards' metadata holds): every field of cfg
    but `device`, which only says where CG runs (CPU and GPU agree to CG's tolerance); with
    given trimaps also where they came from (a folder, or the files), so matting the same
    images with other trimaps is new work."""
    data = cfg.to_dict()
    del data["device"]
    if trimaps:
        data["trimaps"] = list(trimaps)
    return data


def matte_digest(cfg: MattingConfig, trimaps: list[str] | None = None) -> str:
    """The digest that keys a matte run's rows: matte_record's (pipeline.config.digest_of)."""
    return digest_of(matte_record(cfg, trimaps))


@dataclass(frozen=True)
class FeatureGrid:
    """Backbone features of one image and where their cells lie in it."""

    features: np.ndarray  # (gh, gw, C) float32
    geom: GridGeometry

    def at_size(self, height: int, width: int) -> "FeatureGrid":
        """The same grid over the image resampled to (height, width)."""
        g = self.geom
        geom = dataclasses.replace(g, height=height, width=width, scale_y=g.scale_y * g.height / height,
                                   scale_x=g.scale_x * g.width / width)
        return FeatureGrid(self.features, geom)


@dataclass
class MattingResult:
    alpha: np.ndarray  # (H, W) float32 in [0, 1]
    trimap: np.ndarray  # (H, W) float64 {0, 0.5, 1}: given, or automatic
    foreground: np.ndarray | None = None  # (H, W, 3) float32 in [0, 1] (estimate_foreground_ml)
    layers: np.ndarray | None = None  # (k, h, w) spectral layers at the spectral size
    info: dict = field(default_factory=dict)  # seconds per stage, iterations, sizes


# ------------------------------------------------------------------------------ features


def feature_grid(backbone, image: np.ndarray) -> FeatureGrid:
    """(H, W, 3) uint8 and a pipeline.features.backbones.Backbone -> its FeatureGrid."""
    out = backbone([image])[0]
    gh, gw = out.features.shape[:2]
    height, width = image.shape[:2]
    rh, rw = resized_size(height, width, backbone.long_side)
    geom = GridGeometry(grid_h=gh, grid_w=gw, height=height, width=width,
                        cell_h=out.input_hw[0] / gh, cell_w=out.input_hw[1] / gw,
                        scale_y=rh / height, scale_x=rw / width)
    return FeatureGrid(out.features, geom)


def fiedler_vectors(grid: FeatureGrid, k: int = 3) -> np.ndarray:
    """(k, gh, gw) oriented eigenvectors of the patch graph (the extraction recipe)."""
    from pipeline.spectral.spectrum import image_spectrum

    cfg = ExtractConfig(eigen=EigenConfig(k=k))
    # The image argument only feeds the KNN colour term, which is off (knn_lambda = 0).
    return image_spectrum(grid.features, np.zeros((1, 1, 3), np.uint8), cfg).eigenvectors


# ---------------------------------------------------------------------------- Laplacians


def colour_laplacian(image: np.ndarray, cfg: MattingConfig, is_known: np.ndarray | None = None):
    """(H, W, 3) float64 in [0, 1] -> closed-form matting Laplacian (N, N) CSR float64.

    With is_known, windows with no unknown pixel are skipped (pymatting): rows of unknown
    pixels stay exact, the others are not needed by the constrained solve.
    """
    from pymatting import cf_laplacian

    return cf_laplacian(image, epsilon=cfg.cf_epsilon, radius=cfg.cf_radius, is_known=is_known)


def feature_laplacian_rows(grid: FeatureGrid, cfg: MattingConfig, rows=None):
    """Rows (M, N) of the pixel feature Laplacian D - W over grid.geom's image (rows: flat
    pixel indices, default all)."""
    g = grid.geom
    axis_y = interpolation_axis(g.height, g.grid_h, g.cell_h, g.scale_y)
    axis_x = interpolation_axis(g.width, g.grid_w, g.cell_w, g.scale_x)
    stride = max(1, round(cfg.feature_stride * cell_pixels(g)))
    if rows is None:
        rows = np.arange(g.height * g.width)
    W = pixel_feature_affinity(grid.features, axis_y, axis_x, window_offsets(cfg.feature_radius, stride),
                               rows=rows, power=cfg.feature_power)
    return laplacian_rows(W, rows)


def fused_rows(image: np.ndarray, trimap: np.ndarray, cfg: MattingConfig,
               grid: FeatureGrid | None = None):
    """Rows of L for the unknown pixels: ((M, N) CSR, (M,) their flat indices, lambda')."""
    _, _, unknown = split(trimap)
    rows = np.flatnonzero(unknown)
    L = colour_laplacian(image, cfg, is_known=~unknown)[rows]
    weight = 0.0
    if cfg.feature_weight > 0:
        if grid is None:
            raise ValueError("feature_weight > 0 needs the image's FeatureGrid")
        Lf = feature_laplacian_rows(grid.at_size(*image.shape[:2]), cfg, rows)
        colour_diag = L[:, rows].diagonal()
        weight = cfg.feature_weight * float(colour_diag.mean()) / max(float(Lf[:, rows].diagonal().mean()), 1e-12)
        L = (L + weight * Lf).tocsr()
    return L, rows, weight


# -------------------------------------------------------------------------------- solvers


def _use_gpu(device: str) -> bool:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        return False
    try:
        import cupy

        available = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no device: all mean "no GPU"
        available = False
    if device == "cuda" and not available:
        raise RuntimeError("device='cuda' needs CuPy and a CUDA GPU")
    return available


def solve_alpha_cg(image: np.ndarray, trimap: np.ndarray, cfg: MattingConfig,
                   grid: FeatureGrid | None = None) -> tuple[np.ndarray, dict]:
    """(H, W, 3) float64 image, (H, W) trimap -> ((H, W) alpha, info): the constrained solve
    L_UU a_U = -L_UK a_K by PCG, on the GPU when cfg.device asks for it."""
    t0 = time.perf_counter()
    L, rows, weight = fused_rows(image, trimap, cfg, grid)
    fg, _, unknown = split(trimap)
    alpha = fg.astype(np.float64).ravel()
    b = -(L @ alpha)  # alpha is 0 on the unknown columns: only L_UK a_K contributes
    A = L[:, rows]
    t1 = time.perf_counter()
    # An explicit ichol means the CPU under device="auto" (it has no GPU version).
    if _use_gpu(cfg.device) and not (cfg.preconditioner == "ichol" and cfg.device == "auto"):
        import cupy
        import cupyx.scipy.sparse

        res = solve_spd(cupyx.scipy.sparse.csr_matrix(A), cupy.asarray(b), cfg.preconditioner,
                        cfg.rtol, cfg.maxiter)
        x = cupy.asnumpy(res.x)
    else:
        res = solve_spd(A, b, cfg.preconditioner, cfg.rtol, cfg.maxiter)
        x = res.x
    alpha[rows] = x
    t2 = time.perf_counter()
    info = {"seconds_laplacian": t1 - t0, "seconds_solve": t2 - t1, "iterations": res.iterations,
            "preconditioner": res.preconditioner, "n_unknown": int(rows.size),
            "feature_lambda": weight, "nnz": int(A.nnz)}
    return np.clip(alpha.reshape(trimap.shape), 0, 1), info


def spectral_layers(image: np.ndarray, cfg: MattingConfig, grid: FeatureGrid | None = None,
                    k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(h, w, 3) float64 image -> ((k, h, w) smallest eigenvectors of cfg.spectral_graph's
    Laplacian, (k,) eigenvalues ascending)."""
    if cfg.spectral_graph not in LAYER_GRAPHS:
        raise ValueError(f"spectral_graph must be one of {tuple(LAYER_GRAPHS)}, got {cfg.spectral_graph!r}")
    k = min(k or cfg.n_layers, image.shape[0] * image.shape[1] - 1)
    vectors, values = LAYER_GRAPHS[cfg.spectral_graph](image, cfg, grid, k)
    return vectors.T.reshape(-1, *image.shape[:2]), values


def _feature_laplacian(reference, image: np.ndarray, cfg: MattingConfig, grid: FeatureGrid | None):
    """cfg.feature_weight x the pixel feature Laplacian D - W, scaled to `reference`'s mean
    diagonal so that the weight means the same on any image."""
    if grid is None:
        raise ValueError("feature_weight > 0 needs the image's FeatureGrid")
    term = feature_laplacian_rows(grid.at_size(*image.shape[:2]), cfg)
    return cfg.feature_weight * float(reference.diagonal().mean()) / max(float(term.diagonal().mean()), 1e-12) * term


def closed_form_layers(image: np.ndarray, cfg: MattingConfig, grid: FeatureGrid | None, k: int):
    """Levin et al.'s layers: the k smallest eigenpairs of L = L_colour (+ lambda' L_feature),
    -> ((N, k) vectors, (k,) values).

    Shift-invert Lanczos (ARPACK) around a small negative shift, so the factorised L - sI is
    definite although L is singular (constants are in its null space). The LU uses SuperLU's
    minimum-degree ordering of A + A^T, which suits the symmetric stencil: measured on GT01 at
    400 px, 20% less fill and 1.7x faster than its default COLAMD, the same eigenvalues.
    """
    from scipy.sparse.linalg import LinearOperator, eigsh, splu

    L = colour_laplacian(image, cfg)
    if cfg.feature_weight > 0:
        L = (L + _feature_laplacian(L, image, cfg, grid)).tocsr()
    shift = -1e-4
    n = L.shape[0]
    lu = splu((L - shift * scipy.sparse.eye(n)).tocsc(), permc_spec="MMD_AT_PLUS_A")
    inverse = LinearOperator(L.shape, matvec=lu.solve, dtype=np.float64)
    values, vectors = eigsh(L.tocsc(), k=k, sigma=shift, which="LM", OPinv=inverse)
    order = np.argsort(values)
    return vectors[:, order], values[order]


def knn_graph_layers(image: np.ndarray, cfg: MattingConfig, grid: FeatureGrid | None, k: int):
    """The paper's layers: the k smallest eigenpairs of the normalised Laplacian of the pixel
    graph W = W_knn (KNN-matting colour affinity) (+ lambda' W_feature) -> ((N, k) generalised
    eigenvectors, (k,) values).

    Solved by kernels.eigensolver, the extraction's own sparse path (components first, then
    Lanczos per component, residual-checked; the kernels run on CuPy arrays too, though this
    path hands them NumPy). No factorisation, so memory stays O(pixels x neighbours) at any size.
    """
    from kernels.eigensolver import smallest_eigenpairs
    from kernels.knn_affinity import knn_colour_affinity

    W = knn_colour_affinity(image)
    if cfg.feature_weight > 0:
        Lf = _feature_laplacian(scipy.sparse.diags(np.asarray(W.sum(axis=1)).ravel()), image, cfg, grid)
        W = (W + scipy.sparse.diags(Lf.diagonal()) - Lf).tocsr()  # its W = D - L, weights >= 0
    pairs = smallest_eigenpairs(W, k=k)
    return pairs.eigenvectors, pairs.eigenvalues


# Where spectral matting's layers come from (MattingConfig.spectral_graph).
LAYER_GRAPHS = {"cf": closed_form_layers, "knn": knn_graph_layers}


def alpha_from_layers(layers: np.ndarray, values: np.ndarray, trimap: np.ndarray,
                      penalty: float = 100.0) -> np.ndarray:
    """(k, h, w) layers, (k,) eigenvalues, (h, w) trimap -> (h, w) alpha = sum_i y_i layer_i,

    y = argmin y^T diag(values) y + penalty * ||(E y - t) on known pixels||^2: the smoothest
    combination (in L's energy) that fits the known pixels, a k x k solve.
    """
    fg, bg, _ = split(trimap)
    # (n, k) unit columns: orthonormal for "cf" layers, D-orthogonal for "knn" ones (generalised
    # eigenvectors); the fit is a least-squares solve either way.
    E = layers.reshape(len(layers), -1).T
    known = (fg | bg).ravel()
    Ek = E[known]
    A = np.diag(np.maximum(values, 0)) + penalty * Ek.T @ Ek
    y = np.linalg.solve(A, penalty * Ek.T @ fg.ravel()[known].astype(np.float64))
    return np.clip((E @ y).reshape(trimap.shape), 0, 1)


# ---------------------------------------------------------------------------- resampling


def alpha_at_full_size(alpha: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    """(h, w) alpha of a working size, (H, W) full-size trimap -> (H, W) alpha: bilinearly
    upsampled, with the trimap's known pixels kept exact."""
    alpha = np.clip(resize_float(alpha, trimap.shape), 0, 1)
    fg, bg, _ = split(trimap)
    alpha[fg], alpha[bg] = 1.0, 0.0
    return alpha


def fit_long_side(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(h, w) scaled down so that max(h, w) <= max_side (never up)."""
    if not max_side or max(height, width) <= max_side:
        return height, width
    s = max_side / max(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) -> (h, w, 3), area-averaged when shrinking (no aliasing of fine hair)."""
    if image.shape[:2] == size:
        return image
    return np.asarray(Image.fromarray(image).resize(size[::-1], Image.Resampling.BOX))


def resize_float(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float -> (h, w) float64, bilinear."""
    if values.shape == size:
        return values.astype(np.float64)
    img = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(img.resize(size[::-1], Image.Resampling.BILINEAR), dtype=np.float64)


def resize_trimap(trimap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) trimap -> (h, w): a pixel stays known only where all it averages is known, so
    the unknown band never shrinks (nearest would drop thin bands)."""
    if trimap.shape == size:
        return trimap
    small = resize_float(trimap, size)
    out = np.full(size, 0.5)
    out[small >= 1 - 1e-6] = 1.0
    out[small <= 1e-6] = 0.0
    return out


# ------------------------------------------------------------------------------- the job


def estimate_alpha(image: np.ndarray, trimap: np.ndarray, cfg: MattingConfig,
                   grid: FeatureGrid | None = None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(H, W, 3) uint8, (H, W) trimap -> ((H, W) alpha, spectral layers or None, info).

    Solves at the cfg.max_side working size (spectral: cfg.spectral_max_side), upsamples, and
    keeps the full-resolution trimap's known pixels.
    """
    if cfg.solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {cfg.solver!r}")
    if cfg.preconditioner not in PRECONDITIONERS:
        raise ValueError(f"preconditioner must be one of {PRECONDITIONERS}, got {cfg.preconditioner!r}")
    height, width = image.shape[:2]
    side = cfg.max_side
    if cfg.solver == "spectral":
        side = min(side or cfg.spectral_max_side, cfg.spectral_max_side)
    size = fit_long_side(height, width, side)
    work = resize_image(image, size).astype(np.float64) / 255.0
    work_trimap = resize_trimap(trimap, size)
    layers = None
    if cfg.solver == "cg":
        alpha, info = solve_alpha_cg(work, work_trimap, cfg, grid)
    else:
        t0 = time.perf_counter()
        layers, values = spectral_layers(work, cfg, grid)
        t1 = time.perf_counter()
        alpha = alpha_from_layers(layers, values, work_trimap)
        info = {"seconds_eigs": t1 - t0, "seconds_solve": time.perf_counter() - t1,
                "eigenvalues": values.tolist()}
    if size != (height, width):
        alpha = alpha_at_full_size(alpha, trimap)
    info["work_size"] = list(size)
    return alpha.astype(np.float32), layers, info


def matte(image: np.ndarray, cfg: MattingConfig = MattingConfig(), backbone=None,
          trimap: np.ndarray | None = None) -> MattingResult:
    """(H, W, 3) uint8 -> MattingResult. Without `trimap` (automatic mode) the trimap comes
    from the Fiedler vector, which needs `backbone` (pipeline.features.backbones.Backbone), as does
    fusion (feature_weight > 0)."""
    info: dict = {}
    t0 = time.perf_counter()
    grid = None
    if trimap is None or cfg.feature_weight > 0:
        if backbone is None:
            raise ValueError("automatic trimaps and fusion need a backbone")
        size = fit_long_side(*image.shape[:2], cfg.max_side)
        # Features of the working image: the backbone resizes to its long side anyway.
        grid = feature_grid(backbone, resize_image(image, size)).at_size(*image.shape[:2])
    info["seconds_features"] = time.perf_counter() - t0
    if trimap is None:
        t1 = time.perf_counter()
        trimap = auto_trimap(fiedler_vectors(grid), grid.geom, cfg.trimap, image)
        info["seconds_trimap"] = time.perf_counter() - t1
    if trimap.shape != image.shape[:2]:
        raise ValueError(f"trimap {trimap.shape} does not match the image {image.shape[:2]}")
    alpha, layers, solve_info = estimate_alpha(image, trimap, cfg, grid)
    info.update(solve_info)
    foreground = None
    if cfg.estimate_foreground:
        from pymatting import estimate_foreground_ml

        t2 = time.perf_counter()
        foreground = estimate_foreground_ml(image.astype(np.float64) / 255.0, alpha.astype(np.float64))
        foreground = np.clip(foreground, 0, 1).astype(np.float32)
        info["seconds_foreground"] = time.perf_counter() - t2
    info["seconds_total"] = time.perf_counter() - t0
    return MattingResult(alpha=alpha, trimap=trimap, foreground=foreground, layers=layers, info=info)


def cutout(foreground: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(H, W, 3) foreground in [0, 1], (H, W) alpha -> (H, W, 4) uint8 RGBA (straight alpha)."""
    rgba = np.concatenate([foreground, alpha[..., None]], axis=2)
    return np.clip(np.round(rgba * 255), 0, 255).astype(np.uint8)
