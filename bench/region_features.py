"""Prints docs/semantic-results.md's region-feature table: class information of backbone features on ground-truth regions.

How much class information a backbone's features hold on ground-truth regions: the ceiling of
any segment-clustering recipe that uses them.

    python -m bench.region_features --voc-root DATA/voc2007/VOC2007 \\
        [--split Segmentation/trainval] [--backbones NAME ...] [--seeds 5] [--limit N] \\
        [--features keys tokens block7 ...] [--part tune_even.txt]

One region per foreground class of each masked image (pipeline.semantic.oracle). Feature
kinds per backbone: its patch features (each kind the registry offers: keys, tokens) pooled
over the region with cell-coverage weights, and the CLS token of the region's box crop at
224 px; plus an RGB histogram (8 bins per channel) and the majority class as baselines.
Scores: leave-one-out 1-NN accuracy (cosine) and k-means (as many clusters as classes
present, the pipeline's clustering) + Hungarian accuracy, mean over seeds. By default the
registry entries that need no download; hub entries run when named with --backbones (they
retry the download for minutes where the hub is unreachable), and any that fails to load is
listed as skipped.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.config import intermediate_block
from pipeline.features.backbones import BACKBONES, FEATURES, create_backbone
from pipeline.features.geometry import geometry_of
from pipeline.io.images import decode_image
from pipeline.io.semantic_masks import read_class_mask, voc_semantic
from pipeline.io.sources import read_bytes
from pipeline.semantic.clustering import ClusterConfig, fit_clusters, l2_normalize
from pipeline.semantic.oracle import cell_weights, gt_regions, region_boxes, region_pooled
from pipeline.semantic.segments import segment_crops

LONG_SIDE = 448


def nn_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out 1-NN accuracy under cosine similarity."""
    x = l2_normalize(x)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return float(np.mean(y[np.argmax(sim, axis=1)] == y))


def kmeans_accuracy(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """k-means with one cluster per class present, clusters matched to classes (Hungarian)."""
    classes = np.unique(y)
    model = fit_clusters(lambda: iter([x]), ClusterConfig(n_clusters=len(classes), seed=seed, pca_dim=0, whiten=False))
    pred = model.assign(x)
    counts = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(counts, (pred, np.searchsorted(classes, y)), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(y))


def colour_histogram(image: np.ndarray, mask: np.ndarray, bins: int = 8) -> np.ndarray:
    q = (image[mask] // (256 // bins)).astype(np.int64)
    h = np.bincount(q[:, 0] * bins * bins + q[:, 1] * bins + q[:, 2], minlength=bins ** 3)
    return (h / max(h.sum(), 1)).astype(np.float32)


def load_regions(voc_root: str, split: str, limit: int | None, part: str | None = None):
    """-> [(image (H, W, 3), region classes (n,), masks (n, H, W))] of the masked images (those
    the `part` file lists, when given)."""
    out = []
    stems = set(open(part).read().split()) if part else None
    for sample in voc_semantic(voc_root, split)[:limit]:
        if stems is not None and os.path.splitext(os.path.basename(sample.image_id))[0] not in stems:
            continue
        image = decode_image(read_bytes(sample.uri))
        classes, masks = gt_regions(read_class_mask(sample.mask_uri))
        if len(classes) and masks.shape[1:] == image.shape[:2]:
            out.append((image, classes, masks))
    return out


def backbone_features(name: str, regions, kinds: list[str]) -> dict[str, np.ndarray]:
    """{feature kind: (regions, D)} for one backbone: pooled patch features of each kind, crop CLS.
    Block kinds ("blockB") come from the tokens backbone's forward pass (Backbone's also=)."""
    found: dict[str, list[np.ndarray]] = {f"{k} pooled": [] for k in kinds}
    found["crop CLS"] = []
    blocks = tuple(k for k in kinds if intermediate_block(k) is not None)
    models = {k: create_backbone(name, features=k, resize=LONG_SIDE) for k in kinds if k not in blocks}
    if blocks and "tokens" not in models:
        models["tokens"] = create_backbone(name, features="tokens", resize=LONG_SIDE)
    for image, _, masks in regions:
        for kind, model in models.items():
            out = model([image], also=blocks if kind == "tokens" else ())[0]
            row = {"height": image.shape[0], "width": image.shape[1], "input_height": out.input_hw[0],
                   "input_width": out.input_hw[1], "grid_h": out.features.shape[0], "grid_w": out.features.shape[1]}
            weights = cell_weights(masks, geometry_of(row, LONG_SIDE))
            grids = {**({kind: out.features} if kind in kinds else {}), **out.also}
            for pooled_kind, grid in grids.items():
                found[f"{pooled_kind} pooled"].append(region_pooled(grid, weights))
        crops = segment_crops(image, region_boxes(masks), 224)
        found["crop CLS"].append(next(iter(models.values())).cls_embeddings(crops, resize="crop"))
    return {k: np.concatenate(v) for k, v in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voc-root", required=True)
    parser.add_argument("--split", default="Segmentation/trainval")
    parser.add_argument("--backbones", nargs="+", default=[n for n, s in BACKBONES.items() if s.weights != "hub"])
    parser.add_argument("--features", nargs="+", default=list(FEATURES),
                        help="patch feature kinds to pool: FEATURES and blockB (the residual stream after block B)")
    parser.add_argument("--part", default=None, metavar="FILE",
                        help="only the masked images whose stems FILE lists (a tune part)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()

    hub = [n for n, s in BACKBONES.items() if s.weights == "hub" and n not in args.backbones]
    print(f"not run (hub weights; name them with --backbones where the hub is reachable): {', '.join(hub)}")
    regions = load_regions(args.voc_root, args.split, args.limit, args.part)
    y = np.concatenate([c for _, c, _ in regions])
    majority = float(np.max(np.bincount(y)) / len(y))
    print(f"{len(regions)} images, {len(y)} regions, {len(np.unique(y))} classes; majority class {majority:.3f}")
    print(f"{'backbone':<24} {'features':<14} {'1-NN':>6} {'k-means':>8} {'± std':>6} {'s':>6}")
    hist = np.concatenate([np.stack([colour_histogram(im, m) for m in ms]) for im, _, ms in regions])
    table = [("(none)", "RGB histogram", hist, 0.0)]
    for name in args.backbones:
        started = time.time()
        try:
            feats = backbone_features(name, regions, args.features)
        except Exception as exc:  # hub weights offline, missing files: say so and go on
            print(f"{name:<24} skipped: {type(exc).__name__}: {str(exc)[:100]}")
            continue
        seconds = (time.time() - started) / len(regions)
        table += [(name, kind, x, seconds) for kind, x in feats.items()]
    for name, kind, x, seconds in table:
        km = [kmeans_accuracy(x, y, s) for s in range(args.seeds)]
        print(f"{name:<24} {kind:<14} {nn_accuracy(x, y):>6.3f} {np.mean(km):>8.3f} {np.std(km):>6.3f} "
              f"{seconds:>6.2f}", flush=True)
    print("s: seconds per image for all of that backbone's feature kinds together")


if __name__ == "__main__":
    main()
