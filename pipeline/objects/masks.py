"""Single-object segmentation: Fiedler patch mask -> image-resolution mask and soft map.

Thresholding the oriented Fiedler vector at its mean, keeping the largest component and
refining the upsampled binary mask with a guided filter (> 0.5) is the best recipe measured
(offline backbone, ECSSD). The colour guided filter's eps 1e-3 measured better than 1e-2 on
ECSSD's first 200 images (mIoU 81.7 vs 80.7) and on the 300 others (81.6 vs 81.0; docs/objects-results.md,
"Localization and segmentation"). The soft map (for max-F) is the refined mask before its 0.5
threshold.
TokenCut's bilateral solver (refine="bilateral") measured equal to the guided filter within
noise on the tune/check halves of ECSSD and Horse, at about half its time (docs/objects-results.md).

The guided filter itself is kernels.guided_filter (float32, NumPy or CuPy). `subsample` > 1
runs He and Sun's fast guided filter: a and b fitted on s×s block means of the image and of
the masks (formed straight from the patch cells, never at full resolution), applied to the
full-resolution image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from kernels.backend import array_module, to_numpy
from kernels.guided_filter import downsample_mean, fast_guided_filter_blocks, guide_planes, guided_filter
from pipeline.features.geometry import GridGeometry, grid_to_pixels, pixel_cells
from pipeline.objects.bilateral_solver import bilateral_solve
from pipeline.objects.localize import foreground_mask, largest_component

REFINERS = ("none", "guided", "matting", "bilateral")


@dataclass(frozen=True)
class SegmentConfig:
    # Patch threshold on the Fiedler vector: a number or "mean".
    threshold: float | str = "mean"
    largest_component: bool = True
    # "none": bilinear upsampling of the patch mask; "guided": guided filter of the upsampled
    # binary mask; "matting": pymatting closed-form alpha in a band around the mask's edge;
    # "bilateral": TokenCut's fast bilateral solver of the upsampled binary mask.
    refine: str = "guided"
    radius: int = 16
    eps: float = 1e-3
    guide: str = "rgb"  # "rgb" or "gray" guide for the guided filter
    # Refinement works on the image resized to at most this long side (memory: the colour
    # guided filter holds 3×3 matrices per pixel); radius is scaled with it, so it stays in
    # original pixels. With subsample > 1 only the fit runs at reduced size: its factor is
    # raised to ceil(long side / max_side) where that is larger.
    max_side: int = 1024
    # Guided filter: 1 = the exact filter; s > 1 = the fast guided filter (He and Sun 2015),
    # a and b fitted on s×s blocks with radius radius / s, applied at full resolution.
    subsample: int = 1
    # Bilateral solver (TokenCut's values): grid cell sizes in pixels / luma / chroma levels,
    # smoothness weight; sigma_spatial is scaled with max_side like radius.
    sigma_spatial: float = 16.0
    sigma_luma: float = 16.0
    sigma_chroma: float = 8.0
    lam: float = 128.0


@dataclass(frozen=True)
class Segmentation:
    mask: np.ndarray  # (H, W) bool, original resolution
    soft: np.ndarray  # (H, W) float32 in [0, 1]; mask == soft > 0.5
    patch_mask: np.ndarray  # (grid_h, grid_w) bool, before upsampling
    fallback: bool  # the thresholded Fiedler vector was empty or full (whole image)


def patch_mask(eigenvectors: np.ndarray, cfg: SegmentConfig = SegmentConfig()) -> tuple[np.ndarray, bool]:
    """(k, grid_h, grid_w) oriented eigenvectors -> ((grid_h, grid_w) bool, fell back)."""
    fiedler = eigenvectors[1] if len(eigenvectors) > 1 else np.zeros(eigenvectors.shape[1:])
    mask, fallback = foreground_mask(fiedler, cfg.threshold)
    if cfg.largest_component:
        mask = largest_component(mask, fiedler)
    return mask, fallback


def _resized(array: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:
    """float (H, W) or uint8 (H, W, 3) -> the same at size (h, w)."""
    if array.shape[:2] == size:
        return array
    mode = "F" if array.ndim == 2 else None
    img = Image.fromarray(array.astype(np.float32) if mode else array, mode=mode)
    return np.asarray(img.resize(size[::-1], resample))


def _refine_stack(image: np.ndarray, coarse: np.ndarray, cfg: SegmentConfig, refine) -> np.ndarray:
    """Runs refine(work image (h, w, 3) uint8, maps (L, h, w), scale) -> (L, h, w) at most
    cfg.max_side long and brings the result back: (H, W) or (L, H, W) in -> the same, in [0, 1]."""
    stack = coarse if coarse.ndim == 3 else coarse[None]
    h, w = stack.shape[1:]
    s = min(1.0, cfg.max_side / max(h, w))
    work = (max(1, round(h * s)), max(1, round(w * s)))
    small = _resized(image, work, Image.BILINEAR)
    p = np.stack([_resized(c, work, Image.BILINEAR) for c in stack])
    soft = refine(small, p, s)
    out = np.stack([_resized(np.asarray(q, np.float32), (h, w), Image.BILINEAR) for q in soft])
    np.clip(out, 0, 1, out=out)
    return out if coarse.ndim == 3 else out[0]


def _guide(image: np.ndarray, cfg: SegmentConfig) -> np.ndarray:
    """(H, W, 3) uint8 (NumPy or CuPy) -> the guide's (C, H, W) float32 planes in [0, 1]
    (C = 3, or 1 grey), on the image's device."""
    xp = array_module(image)
    guide = image.astype(xp.float32) * np.float32(1 / 255)
    if cfg.guide == "gray":  # weighted sum, not a matrix product (BLAS threads cost more here)
        guide = guide[..., 0] * 0.299 + guide[..., 1] * 0.587 + guide[..., 2] * 0.114
    return guide_planes(guide)


def fast_factor(height: int, width: int, cfg: SegmentConfig) -> int:
    """The fast guided filter's block size for an image: cfg.subsample, raised so that the
    fit runs at most cfg.max_side long."""
    return max(cfg.subsample, -(-max(height, width) // cfg.max_side))


def _fast(image: np.ndarray, p_blocks: np.ndarray, s: int, cfg: SegmentConfig) -> np.ndarray:
    """The fast guided filter of maps given as s×s block means (L, h, w) -> (L, H, W) in [0, 1]."""
    soft = fast_guided_filter_blocks(_guide(image, cfg), p_blocks, cfg.radius, cfg.eps, s)
    return array_module(soft).clip(soft, 0, 1, out=soft)


def refine_guided(image: np.ndarray, coarse: np.ndarray, cfg: SegmentConfig) -> np.ndarray:
    """(H, W, 3) uint8, coarse (H, W) {0, 1} map or (L, H, W) stack of them -> soft map(s) in
    [0, 1], float32, shaped like coarse (a stack shares one filtering pass)."""
    if cfg.subsample > 1:
        stack = coarse if coarse.ndim == 3 else coarse[None]
        s = fast_factor(*stack.shape[1:], cfg)
        out = _fast(image, downsample_mean(stack, s), s, cfg)
        return out if coarse.ndim == 3 else out[0]

    def run(small, p, s):
        return guided_filter(_guide(small, cfg)[0] if cfg.guide == "gray" else small * np.float32(1 / 255),
                             p, max(1, round(cfg.radius * s)), cfg.eps)
    return _refine_stack(image, coarse, cfg, run)


def cell_block_means(cells: np.ndarray, geom: GridGeometry, s: int) -> np.ndarray:
    """(L, grid_h, grid_w) patch masks -> (L, ceil(H/s), ceil(W/s)) float32: the s×s block
    means of their nearest-cell upsampling to the original image (grid_to_pixels with
    bilinear=False), equal to downsample_mean of it, without forming it. On the cells' device."""
    xp = array_module(cells)
    rows, cols = (xp.asarray(np.argmax(m, axis=1)) for m in pixel_cells(geom))
    per_row = downsample_mean(xp.asarray(cells, xp.float32)[:, rows, :], s, axes=(-2,))  # (L, h, grid_w)
    return downsample_mean(per_row[:, :, cols], s, axes=(-1,))


def refine_guided_cells(image: np.ndarray, cells: np.ndarray, geom: GridGeometry, cfg: SegmentConfig) -> np.ndarray:
    """(H, W, 3) uint8, (L, grid_h, grid_w) bool patch masks -> (L, H, W) float32 soft maps in
    [0, 1]: refine_guided of their nearest-cell upsampling, which the fast filter
    (cfg.subsample > 1) never forms at full resolution. The fast filter runs on the image's
    device (a CuPy image: the masks stay on the GPU); the exact one on the host."""
    if cfg.subsample > 1:
        s = fast_factor(geom.height, geom.width, cfg)
        return _fast(image, cell_block_means(array_module(image).asarray(cells), geom, s), s, cfg)
    image = to_numpy(image)
    return refine_guided(image, np.stack([grid_to_pixels(c, geom, bilinear=False) for c in cells]), cfg)


def refine_bilateral(image: np.ndarray, coarse: np.ndarray, cfg: SegmentConfig) -> np.ndarray:
    """(H, W, 3) uint8, coarse (H, W) {0, 1} map or (L, H, W) stack -> the bilateral solver's
    maps (pipeline.objects.bilateral_solver) in [0, 1], shaped like coarse (one grid for all)."""
    def run(small, p, s):
        return np.moveaxis(bilateral_solve(small, np.moveaxis(p, 0, -1), sigma_spatial=max(1.0, cfg.sigma_spatial * s),
                                           sigma_luma=cfg.sigma_luma, sigma_chroma=cfg.sigma_chroma, lam=cfg.lam), -1, 0)
    return _refine_stack(image, coarse, cfg, run)


# Refiners of an upsampled binary mask (or a stack of them) at image resolution.
PIXEL_REFINERS = {"guided": refine_guided, "bilateral": refine_bilateral}


def refine_matting(image: np.ndarray, coarse: np.ndarray, band: int) -> np.ndarray:
    """(H, W, 3) uint8, (H, W) {0, 1}, band width in pixels -> closed-form alpha (Levin et al.)
    in the band, the coarse mask outside it. Slow (a sparse solve per image; numba compiles
    once per process), so an explicit option."""
    from pymatting import estimate_alpha_cf

    fg = coarse > 0.5
    structure = np.ones((3, 3), bool)
    sure_fg = ndimage.binary_erosion(fg, structure, iterations=band)
    sure_bg = ~ndimage.binary_dilation(fg, structure, iterations=band)
    if not sure_fg.any() or not sure_bg.any():  # nothing to anchor one side: keep the mask
        return fg.astype(np.float64)
    trimap = np.full(fg.shape, 0.5)
    trimap[sure_fg], trimap[sure_bg] = 1.0, 0.0
    alpha = estimate_alpha_cf(image.astype(np.float64) / 255.0, trimap)
    return np.clip(alpha, 0, 1)


def segment(eigenvectors: np.ndarray, image: np.ndarray, geom: GridGeometry,
            cfg: SegmentConfig = SegmentConfig()) -> Segmentation:
    """(k, grid_h, grid_w) oriented eigenvectors and the original (H, W, 3) uint8 image ->
    its foreground Segmentation at (H, W)."""
    if cfg.refine not in REFINERS:
        raise ValueError(f"refine must be one of {REFINERS}, got {cfg.refine!r}")
    cells, fallback = patch_mask(eigenvectors, cfg)
    if cfg.refine == "none":
        soft = grid_to_pixels(cells, geom, bilinear=True)
    elif cfg.refine == "guided":
        soft = refine_guided_cells(image, cells[None], geom, cfg)[0]
    else:
        coarse = grid_to_pixels(cells, geom, bilinear=False)
        if cfg.refine in PIXEL_REFINERS:
            soft = PIXEL_REFINERS[cfg.refine](image, coarse, cfg)
        else:
            band = max(1, round(0.5 * geom.cell_h / geom.scale_y))
            soft = refine_matting(image, coarse, band)
    soft = np.clip(soft, 0, 1).astype(np.float32)
    return Segmentation(mask=soft > 0.5, soft=soft, patch_mask=cells, fallback=fallback)
