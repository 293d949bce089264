"""The tasks `deep-spectral evaluate` knows: a registry from name to readers, per-image
evaluation and summary, so later tasks (semantic segmentation, matting) plug into the same
command, flags, outputs and JSON shape.

A task maps an `Item` (sample, shard row, decoded image, eigenvectors, geometry) to a `Result`
(JSON-able per-image record plus masks / boxes for outputs and panels), and a list of Results
to flat metrics.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

from jobs import extract
from pipeline.config import ExtractConfig, RuntimeConfig
from pipeline.io.ground_truth import Sample, coco_boxes, folder_pairs, read_mask, voc_boxes
from pipeline.features.geometry import GridGeometry, grid_to_pixels
from pipeline.objects.localize import LocalizeConfig, localize
from pipeline.evaluation.object_metrics import best_box_iou, mask_iou, max_f_beta, pixel_accuracy, precision_recall_curve
from pipeline.objects.instances import pixel_box
from pipeline.objects.masks import REFINERS, SegmentConfig, segment
from pipeline.io.sources import ImageRef


@dataclass
class Item:
    """One image to evaluate: its sample, shard row, decoded image and eigenvectors."""

    sample: Sample
    row: dict
    image: np.ndarray  # (H, W, 3) uint8, decoded as extraction decoded it
    eigenvectors: np.ndarray  # (k, grid_h, grid_w)
    geom: GridGeometry


@dataclass
class Result:
    """A task's answer for one image: JSON-able numbers plus what outputs and panels show."""

    record: dict
    mask: np.ndarray | None = None  # (H, W) bool
    soft: np.ndarray | None = None  # (H, W) float in [0, 1]
    gt_mask: np.ndarray | None = None
    boxes: np.ndarray | None = None  # (n, 4) xyxy, best first
    scores: np.ndarray | None = None
    gt_boxes: np.ndarray | None = None
    curves: tuple[np.ndarray, np.ndarray] | None = None  # precision, recall over thresholds
    overlay: np.ndarray | None = None  # (H, W) bool shown on the panel when there is no mask


@dataclass(frozen=True)
class Task:
    name: str
    help: str
    samples: Callable[[argparse.Namespace], list[Sample]]
    config: Callable[[argparse.Namespace], object]  # a typed dataclass, recorded in the JSON
    evaluate: Callable[[Item, object], Result]
    summarize: Callable[[list[Result]], dict]  # flat metrics
    metrics: tuple[str, ...] = field(default=())  # the table's metric columns
    add_arguments: Callable[[argparse._ArgumentGroup], None] | None = None  # the task's own flags


# ------------------------------------------------------------------------------ datasets


def data_flags(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ("images", "masks", "annotations", "voc_root", "split")
            if getattr(args, k, None) is not None}


def extract_samples(args: argparse.Namespace, cfg: ExtractConfig, runtime: RuntimeConfig,
                    samples: list[Sample]) -> tuple[str, str, dict, float]:
    """Extract (or reuse) the benchmark images' shards, as every evaluation does first ->
    (OUT, shards folder, run_extract's summary, seconds)."""
    out = args.out.rstrip("/")
    shards = args.shards or f"{out}/spectral"
    os.makedirs(out, exist_ok=True)
    started = time.time()
    summary = extract.run_extract(None, shards, cfg, runtime, local=args.local,
                                  refs=[ImageRef(s.image_id, s.uri) for s in samples],
                                  reuse=getattr(args, "reuse_shards", None))
    return out, shards, summary, time.time() - started


def _mask_samples(args: argparse.Namespace) -> list[Sample]:
    if not (args.images and args.masks):
        raise SystemExit("segmentation needs --images DIR --masks DIR")
    return folder_pairs(args.images, args.masks)


def _box_samples(args: argparse.Namespace) -> list[Sample]:
    if args.voc_root:
        return voc_boxes(args.voc_root, args.split)
    if args.images and args.annotations:
        return coco_boxes(args.images, args.annotations)
    if args.images and args.masks:  # single-object benchmarks: the box around the GT mask
        return folder_pairs(args.images, args.masks)
    raise SystemExit("localization needs --voc-root DIR [--split S], --images DIR --annotations "
                     "FILE.json, or --images DIR --masks DIR")


def _threshold(args: argparse.Namespace, default: float | str) -> float | str:
    if args.threshold is None:
        return default
    return "mean" if args.threshold == "mean" else float(args.threshold)


# ------------------------------------------------------------------------- segmentation


def _segment_config(args: argparse.Namespace) -> SegmentConfig:
    d = SegmentConfig()
    return SegmentConfig(threshold=_threshold(args, d.threshold),
                         refine=args.refine_method if args.refine else "none",
                         radius=args.guided_radius, eps=args.guided_eps, guide=args.guide)


def _segmentation_arguments(group: argparse._ArgumentGroup) -> None:
    d = SegmentConfig()
    group.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                       help="refine masks at image resolution")
    group.add_argument("--refine-method", choices=[r for r in REFINERS if r != "none"], default=d.refine)
    group.add_argument("--guided-radius", type=int, default=d.radius)
    group.add_argument("--guided-eps", type=float, default=d.eps)
    group.add_argument("--guide", choices=["rgb", "gray"], default=d.guide)


def _evaluate_segmentation(item: Item, cfg: SegmentConfig) -> Result:
    seg = segment(item.eigenvectors, item.image, item.geom, cfg)
    gt = read_mask(item.sample.mask_uri)
    soft = seg.soft
    if soft.shape != gt.shape:  # a mask saved at another size: compare at the GT's
        soft = np.asarray(Image.fromarray(soft, mode="F").resize(gt.shape[::-1], Image.BILINEAR))
    mask = soft > 0.5
    record = {"iou": mask_iou(mask, gt), "accuracy": pixel_accuracy(mask, gt), "fallback": seg.fallback}
    return Result(record, mask=mask, soft=soft, gt_mask=gt, curves=precision_recall_curve(soft, gt))


def _summarize_segmentation(results: list[Result]) -> dict:
    if not results:
        return {"miou": float("nan"), "accuracy": float("nan"), "max_f": float("nan")}
    return {"miou": float(np.mean([r.record["iou"] for r in results])),
            "accuracy": float(np.mean([r.record["accuracy"] for r in results])),
            "max_f": max_f_beta([r.curves[0] for r in results], [r.curves[1] for r in results]),
            "n_fallback": int(sum(r.record["fallback"] for r in results))}


# ------------------------------------------------------------------------- localization


def _localize_config(args: argparse.Namespace) -> LocalizeConfig:
    return LocalizeConfig(threshold=_threshold(args, LocalizeConfig().threshold))


def _evaluate_localization(item: Item, cfg: LocalizeConfig) -> Result:
    loc = localize(item.eigenvectors, item.geom, cfg)
    gt_boxes = item.sample.boxes
    if item.sample.mask_uri and not len(gt_boxes):
        gt = read_mask(item.sample.mask_uri)
        gt_boxes = _mask_bbox(gt)
    iou = best_box_iou(loc.box, gt_boxes)
    record = {"box": [round(float(v), 2) for v in loc.box], "iou": iou, "correct": iou >= 0.5,
              "n_gt": int(len(gt_boxes)), "fallback": loc.fallback}
    overlay = grid_to_pixels(loc.mask, item.geom, bilinear=False) > 0.5
    return Result(record, boxes=loc.boxes, scores=loc.scores, gt_boxes=gt_boxes, overlay=overlay)


def _mask_bbox(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (1, 4) box around all foreground pixels, or (0, 4) when empty."""
    return pixel_box(mask)[None] if mask.any() else np.zeros((0, 4))


def _summarize_localization(results: list[Result]) -> dict:
    # CorLoc over images that have an object: an image without boxes cannot be localized.
    scored = [r for r in results if r.record["n_gt"] > 0]
    return {"corloc": float(np.mean([r.record["correct"] for r in scored])) if scored else float("nan"),
            "n_without_gt": len(results) - len(scored),
            "n_fallback": int(sum(r.record["fallback"] for r in results))}


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("segmentation", "single-object segmentation: mIoU, pixel accuracy, max F-beta",
         _mask_samples, _segment_config, _evaluate_segmentation, _summarize_segmentation,
         ("miou", "accuracy", "max_f"), _segmentation_arguments),
    Task("localization", "single-object localization: CorLoc (box IoU >= 0.5 with any GT box)",
         _box_samples, _localize_config, _evaluate_localization, _summarize_localization,
         ("corloc",)),
]}
