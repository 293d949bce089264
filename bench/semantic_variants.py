"""Prints docs/semantic-results.md's segment-settings table (COCO128): per-image segment settings on one extraction.

    python -m bench.semantic_variants --shards SHARDS --masks DATA/coco128/semantic_masks \\
        --label-map DATA/coco128/semantic_eval_map.json [--segments 4 8 15] [--seeds 3]

SHARDS must be written by `evaluate semantic` / `extract` with --segments N --store-features.
Segments are recomputed from the stored eigenvectors for each (segments, background rule)
setting, with mask-pooled stored patch features ("pool"); the stored crop-CLS features of
the extraction's own setting are scored too. Every setting goes through the same clustering,
pseudo-labels and Hungarian mIoU as `deep-spectral evaluate semantic` (12 clusters + background
by default, mean ± std over seeds).
"""
from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np

from jobs.cluster import pick_digest
from pipeline.semantic.clustering import ClusterConfig, fit_clusters
from pipeline.config import ExtractConfig
from pipeline.features.geometry import geometry_of
from pipeline.semantic.pseudo_labels import label_grid, label_image
from pipeline.io.schema import eigenvectors_of, features_of, segments_of
from pipeline.semantic.segments import pooled_features, segment_map
from pipeline.io.semantic_masks import read_class_mask, read_label_map
from pipeline.evaluation.semantic_metrics import confusion, hungarian_miou
from pipeline.io.shards import read_table, shard_config


def score(rows, segments, gts, n_classes, n_clusters, seeds, long_side) -> tuple[float, float, float]:
    """segments: per row (segment map, (n, D) features) -> (mIoU mean, std, background IoU)."""
    features = [f for _, f in segments if len(f)]
    mious, background = [], []
    for seed in seeds:
        model = fit_clusters(lambda: iter(features), ClusterConfig(n_clusters=n_clusters, seed=seed, pca_dim=0, whiten=False))
        counts = np.zeros((n_clusters + 1, n_classes), np.int64)
        for row, (smap, f) in zip(rows, segments):
            labels = model.assign(f) + 1 if len(f) else np.zeros(0, int)
            pixels = label_image(label_grid(smap, labels), geometry_of(row, long_side))
            counts += confusion(pixels, gts[row["image_id"]], n_clusters + 1, n_classes)
        result = hungarian_miou(counts)
        mious.append(result.miou)
        background.append(result.iou[0])
    return float(np.mean(mious)), float(np.std(mious)), float(np.mean(background))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--config-digest", default=None, help="which extraction (default: the only one)")
    parser.add_argument("--masks", required=True)
    parser.add_argument("--label-map", required=True)
    parser.add_argument("--segments", type=int, nargs="+", default=[4, 8, 15])
    parser.add_argument("--clusters", type=int, default=None, help="default: classes - 1")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    table = read_table(args.shards)
    digest = pick_digest(args.shards, args.config_digest)
    cfg = ExtractConfig.from_dict(shard_config(args.shards, digest))
    rows = [r for r in table.to_pylist() if r["config_digest"] == digest]
    label_map = read_label_map(args.label_map)
    gts = {r["image_id"]: read_class_mask(f"{args.masks}/{os.path.splitext(r['image_id'])[0]}.png", label_map)
           for r in rows}
    n_classes = len(label_map.classes)
    clusters = args.clusters or n_classes - 1
    seeds = range(args.seeds)
    long_side = cfg.backbone.long_side

    print(f"{len(rows)} images, {clusters} clusters + background, {args.seeds} seeds, "
          f"extraction {digest} ({cfg.backbone.name}, long side {long_side})")
    print(f"{'features':>8} {'segments':>8} {'background':>10} {'mIoU':>7} {'± std':>6} {'bg IoU':>7}")
    stored = cfg.segments
    m, s, bg = score(rows, [(segments_of(r)[0], segments_of(r)[2]) for r in rows], gts, n_classes, clusters, seeds, long_side)
    print(f"{stored.features + '*':>8} {stored.n_segments:>8} {stored.background:>10} {m:>7.4f} {s:>6.4f} {bg:>7.3f}")
    for n in args.segments:
        for rule in ("border", "fiedler"):
            seg_cfg = dataclasses.replace(stored, n_segments=n, background=rule)
            segments = []
            for r in rows:
                smap = segment_map(eigenvectors_of(r), seg_cfg)
                segments.append((smap, pooled_features(features_of(r), smap, int(smap.max()))))
            m, s, bg = score(rows, segments, gts, n_classes, clusters, seeds, long_side)
            print(f"{'pool':>8} {n:>8} {rule:>10} {m:>7.4f} {s:>6.4f} {bg:>7.3f}", flush=True)
    print("* the extraction's own segments and features, as stored")


if __name__ == "__main__":
    main()
