"""`evaluate semantic --oracle-segments`: the same features, clustering and matching with the
ground-truth regions as the segments (pipeline.semantic.oracle), so every figure comes with
the ceiling its backbone allows.

Region features follow the extraction's --segment-features: "pool" averages the graph's patch
features over each region (coverage-weighted; the stored ones with --store-features, else from
a forward pass per scored image), "keys" and "blockB" average the last block's keys or block
B's tokens the same way (one forward pass per scored image), "crop" re-embeds the box around
each region with the crops' embedder (the backbone's CLS token, or extract.segments.backbone's) at
extract.segments.crop_size, and joined kinds ("pool+block9", "crop+pool+block9") join the regions' features as
segments' are. With --region-crops NAME those features are what a region's segments pool, and
the region's box crop embedded by NAME is joined to them (or replaces them) as the pipeline's
re-embedded regions are (pipeline.semantic.region_crops.region_features). Only the scored
images have ground truth, so the oracle clusters their regions alone.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.config import ExtractConfig
from pipeline.evaluation.semantic_metrics import confusion, hungarian_miou
from pipeline.features.geometry import geometry_of
from pipeline.io.ground_truth import Sample
from pipeline.io.images import decode_image
from pipeline.io.semantic_masks import LabelMap, read_class_mask
from pipeline.io.sources import read_bytes
from pipeline.semantic.clustering import ClusterConfig, fit_clusters
from pipeline.semantic.keyed_sample import Keys
from pipeline.semantic.labelling import segment_rows
from pipeline.semantic.oracle import cell_weights, gt_regions, region_boxes, region_labels, region_pooled
from pipeline.semantic.region_crops import RegionCropConfig, region_features as joined_region_features
from pipeline.semantic.segments import (backbone_grids, backbone_kinds, feature_kinds, joined, pooled_parts,
                                        segment_crops)
from pipeline.spectral.affinity import upsample_features


def _at_image_size(masks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(n, h, w) masks -> (n, H, W) at the image's size (a mask may be saved at another size)."""
    if masks.shape[1:] == shape:
        return masks
    return np.stack([np.asarray(Image.fromarray(m).resize(shape[::-1], Image.NEAREST)) for m in masks])


def region_features(shards: str, cfg: ExtractConfig, samples: dict[str, Sample], label_map: LabelMap | None,
                    ignore_index: int, region_crops: RegionCropConfig | None = None
                    ) -> tuple[dict[str, np.ndarray], list[str]]:
    """-> ({image_id: (n, D) features of its ground-truth regions}, images that failed)."""
    kinds, parts = feature_kinds(cfg.segments.features), pooled_parts(cfg.segments.features)
    pool = "pool" in parts
    stored = pool and cfg.store_features  # else the graph's features come from a forward pass
    forward = backbone_kinds(cfg.segments.features)
    needs_pass = bool(forward) or (pool and not stored)
    crops_by_graph = "crop" in kinds and not cfg.segments.backbone
    backbone = crop_embedder = None
    if needs_pass or crops_by_graph:
        from pipeline.features.backbones import create_backbone  # torch only when crops, keys or blocks need it

        backbone = create_backbone(cfg.backbone.name, weights=cfg.backbone.weights, features=cfg.backbone.features,
                                   resize=(cfg.backbone.long_side or "crop") if needs_pass else "crop")
    if "crop" in kinds:  # the crops' own embedder, as segments have
        if cfg.segments.backbone:
            from pipeline.features.supervised import segment_embedder

            crop_embedder = segment_embedder(cfg.segments.backbone)
        else:
            crop_embedder = backbone
    region_embedder = None
    if region_crops:
        from pipeline.features.supervised import segment_embedder

        region_embedder = segment_embedder(region_crops.backbone)
    found, failed = {}, []
    for row in segment_rows(shards, cfg.digest(), image_ids=list(samples), patch_features="tokens" if stored else None):
        try:
            gt = read_class_mask(samples[row["image_id"]].mask_uri, label_map)
            _, masks = gt_regions(gt, ignore_index)
            masks = _at_image_size(masks, (row["height"], row["width"]))
            if not len(masks):
                found[row["image_id"]] = np.zeros((0, row["segment_dim"] or 0), np.float32)
                continue
            image = (decode_image(read_bytes(row["source_uri"]), cfg.max_pixels)
                     if needs_pass or "crop" in kinds or region_crops else None)
            per_kind = {}
            if parts:
                grids = {"pool": row["patch_features"]} if stored else {}
                if needs_pass:
                    output = backbone([image], also=forward)[0]
                    grids.update(backbone_grids(output, forward, cfg.graph.upsample))
                    if pool and not stored:
                        grids["pool"] = upsample_features(output.features, cfg.graph.upsample)
                weights = cell_weights(masks, geometry_of(row, cfg.backbone.long_side))
                per_kind = {k: region_pooled(grids[k], weights) for k in parts}
            if "crop" in kinds:
                crops = segment_crops(image, region_boxes(masks), cfg.segments.crop_size)
                per_kind["crop"] = crop_embedder.cls_embeddings(crops, resize="crop")
            found[row["image_id"]] = joined([per_kind[k] for k in kinds])
            if region_crops:
                crops = segment_crops(image, region_boxes(masks), region_crops.crop_size)
                found[row["image_id"]] = joined_region_features(region_embedder.cls_embeddings(crops, resize="crop"),
                                                                found[row["image_id"]], region_crops.features)
        except Exception as exc:
            print(f"  oracle failed {row['image_id']}: {type(exc).__name__}: {exc}")
            failed.append(row["image_id"])
    return found, failed


def score_oracle(features: dict[str, np.ndarray], samples: dict[str, Sample], label_map: LabelMap | None,
                 n_classes: int, cluster: ClusterConfig, ignore_index: int,
                 parts: dict[str, set[str]] | None = None) -> dict:
    """One seed: k-means of every region feature, each region labelled cluster + 1, scored at
    the ground truth's pixels with one Hungarian matching -> {miou, pixel_accuracy, iou, parts}
    (`parts`: {name: image ids} scored on their own, each with its own matching)."""
    parts = parts or {}
    # Keyed by (image, region): the fit sees the same regions in the same order however the
    # shards ordered the images (pipeline.semantic.keyed_sample).
    model = fit_clusters(lambda: ((Keys(np.full(len(f), i, object), np.arange(len(f))), f)
                                  for i, f in features.items() if len(f)), cluster)
    counts = np.zeros((cluster.n_clusters + 1, n_classes), np.int64)
    counts_parts = {name: counts.copy() for name in parts}
    for image_id, f in features.items():
        gt = read_class_mask(samples[image_id].mask_uri, label_map)
        _, masks = gt_regions(gt, ignore_index)
        labels = model.assign(f) + 1 if len(f) else np.zeros(0, np.int64)
        image_counts = confusion(region_labels(masks, labels, gt.shape), gt, cluster.n_clusters + 1,
                                 n_classes, ignore_index)
        counts += image_counts
        for name, ids in parts.items():
            if image_id in ids:
                counts_parts[name] += image_counts
    score = hungarian_miou(counts)
    part_scores = {name: hungarian_miou(c) for name, c in counts_parts.items()}
    return {"seed": cluster.seed, "miou": score.miou, "pixel_accuracy": score.pixel_accuracy,
            "iou": score.iou.tolist(), "n_regions": model.n_fitted,
            "parts": {name: {"miou": p.miou, "pixel_accuracy": p.pixel_accuracy} for name, p in part_scores.items()}}
