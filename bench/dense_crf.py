"""Prints docs/objects-results.md's dense CRF rows: a dense CRF (pydensecrf2) against the guided filter on the Fiedler mask.

    DATA=path/to/data
    deep-spectral extract $DATA/ecssd/images --out OUT --store-features
    pip wheel --no-deps pydensecrf2==1.1            # an sdist: builds in ~10 min (Eigen, C++)
    pip install --no-deps --target CRF pydensecrf2-1.1-*.whl
    PYTHONPATH=CRF python -m bench.dense_crf --shards OUT --images $DATA/ecssd/images \\
        --masks $DATA/ecssd/masks --split half

On the stored shards (no forward pass). pydensecrf2 is not a dependency of the project (an
sdist only, no wheel on PyPI): this bench is its only user.
Unary: −log of the upsampled patch mask smoothed to p ∈ [0.05, 0.95] (bilinear), the
reference's and DeepLab's pairwise terms (Gaussian: σ 3 px, weight 3; bilateral: σ_xy 67 px,
σ_rgb 3, weight 4), 10 mean-field iterations; the mask is argmax.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image

from bench.single_object import _items, benchmark_parts
from jobs.runner import set_threads
from pipeline.config import ExtractConfig
from pipeline.evaluation.object_metrics import mask_iou
from pipeline.features.geometry import grid_to_pixels
from pipeline.io.ground_truth import read_mask
from pipeline.objects.masks import PIXEL_REFINERS, SegmentConfig, patch_mask


def dense_crf(image: np.ndarray, p: np.ndarray, iterations: int = 10) -> np.ndarray:
    """(H, W, 3) uint8 image, (H, W) foreground probability -> (H, W) bool."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    h, w = p.shape
    crf = dcrf.DenseCRF2D(w, h, 2)
    probs = np.stack([1 - p, p]).astype(np.float32)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=67, srgb=3, rgbim=np.array(image, np.uint8, order="C"), compat=4)
    return np.argmax(np.array(crf.inference(iterations)).reshape(2, h, w), axis=0).astype(bool)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--masks", required=True)
    p.add_argument("--split", required=True, help="half | parity")
    p.add_argument("--limit", type=int, default=0)
    a = p.parse_args()
    set_threads(1)
    cfg = ExtractConfig(store_features=True)
    samples, parts = benchmark_parts(a)
    levers = ("none", "guided", "crf", "guided+crf")
    scores = {lv: {"tune": [], "check": []} for lv in levers}
    seconds = {lv: [] for lv in levers}
    for item in _items(a.shards, cfg.digest(), samples, cfg.backbone.long_side, sorted(parts)):
        s = samples[item.row["image_id"]]
        cells = patch_mask(item.eigenvectors, SegmentConfig())[0]
        t = time.perf_counter()
        smooth = grid_to_pixels(cells, item.geom, bilinear=True)
        seconds["none"].append(time.perf_counter() - t)
        t = time.perf_counter()
        guided = PIXEL_REFINERS["guided"](item.image, grid_to_pixels(cells, item.geom, bilinear=False), SegmentConfig())
        seconds["guided"].append(time.perf_counter() - t)
        t = time.perf_counter()
        crf = dense_crf(item.image, np.clip(smooth, 0.05, 0.95))
        seconds["crf"].append(time.perf_counter() - t)
        t = time.perf_counter()
        both = dense_crf(item.image, np.clip(guided, 0.05, 0.95))
        seconds["guided+crf"].append(time.perf_counter() - t + seconds["guided"][-1])
        gt = read_mask(s.mask_uri)
        for lv, m in (("none", smooth > 0.5), ("guided", guided > 0.5), ("crf", crf), ("guided+crf", both)):
            if m.shape != gt.shape:
                m = np.asarray(Image.fromarray(m).resize(gt.shape[::-1], Image.NEAREST))
            scores[lv][parts[s.image_id]].append(mask_iou(m, gt))
    n = {pt: len(scores["none"][pt]) for pt in ("tune", "check")}
    print(f"{a.shards}: tune {n['tune']}, check {n['check']} images; mIoU in %, Fiedler mask refined by:")
    print("| refine | tune mIoU | check mIoU | s/image |")
    print("|---|---|---|---|")
    for lv in levers:
        print(f"| {lv} | {100 * np.mean(scores[lv]['tune']):.1f} | {100 * np.mean(scores[lv]['check']):.1f} | "
              f"{np.median(seconds[lv]):.3f} |")


if __name__ == "__main__":
    main()
