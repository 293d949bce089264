"""The tasks `deep-spectral evaluate` knows: a registry from name to readers, the label
configuration it scores, per-image evaluation and summary, so every task shares one command,
flags, outputs and JSON shape.

Evaluation scores what users get: `deep-spectral label` runs on the benchmark's images (same
actors, same shards), and a task maps each image's best-scored object row of the labels table
(box, RLE mask, soft mask when stored) and its ground truth to a `Result` (JSON-able per-image
record plus masks for outputs), and a list of Results to flat metrics.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

from jobs import extract
from pipeline.config import ExtractConfig, RuntimeConfig
from pipeline.evaluation.object_metrics import best_box_iou, mask_iou, max_f_beta, pixel_accuracy, precision_recall_curve
from pipeline.io.coco_instances import decode_mask
from pipeline.io.ground_truth import Sample, coco_boxes, folder_pairs, read_mask, voc_boxes
from pipeline.io.soft_masks import decode_soft
from pipeline.io.sources import ImageRef
from pipeline.objects.instances import LabelConfig, pixel_box


@dataclass
class Result:
    """A task's answer for one image: JSON-able numbers plus what outputs show."""

    record: dict
    mask: np.ndarray | None = None  # (H, W) bool
    soft: np.ndarray | None = None  # (H, W) float in [0, 1]
    curves: tuple[np.ndarray, np.ndarray] | None = None  # precision, recall over thresholds


@dataclass(frozen=True)
class Task:
    name: str
    help: str
    samples: Callable[[argparse.Namespace], list[Sample]]
    # The label run it scores, from `label`'s flags (recorded in the JSON).
    label_config: Callable[[LabelConfig], LabelConfig]
    evaluate: Callable[[Sample, dict], Result]  # (sample, its best object's labels row)
    summarize: Callable[[list[Result]], dict]  # flat metrics
    metrics: tuple[str, ...] = field(default=())  # the table's metric columns
    columns: tuple[str, ...] = ("image_id", "object", "box", "fallback", "rank")  # labels columns read


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


# ------------------------------------------------------------------------- segmentation


def _evaluate_segmentation(sample: Sample, obj: dict) -> Result:
    gt = read_mask(sample.mask_uri)
    if obj["soft"] is not None:
        soft = decode_soft(obj["soft"])
    else:  # a run without soft masks: its binary mask (max-F then has one threshold)
        soft = decode_mask(obj["segmentation"], obj["height"], obj["width"]).astype(np.float32)
    if soft.shape != gt.shape:  # a mask saved at another size: compare at the GT's
        soft = np.asarray(Image.fromarray(soft, mode="F").resize(gt.shape[::-1], Image.BILINEAR))
    mask = soft > 0.5
    record = {"iou": mask_iou(mask, gt), "accuracy": pixel_accuracy(mask, gt), "fallback": obj["fallback"],
              "rank": obj["rank"]}
    return Result(record, mask=mask, soft=soft, curves=precision_recall_curve(soft, gt))


def _summarize_segmentation(results: list[Result]) -> dict:
    if not results:
        return {"miou": float("nan"), "accuracy": float("nan"), "max_f": float("nan")}
    return {"miou": float(np.mean([r.record["iou"] for r in results])),
            "accuracy": float(np.mean([r.record["accuracy"] for r in results])),
            "max_f": max_f_beta([r.curves[0] for r in results], [r.curves[1] for r in results]),
            "n_fallback": int(sum(r.record["fallback"] for r in results))}


# ------------------------------------------------------------------------- localization


def _evaluate_localization(sample: Sample, obj: dict) -> Result:
    gt_boxes = sample.boxes
    if sample.mask_uri and not len(gt_boxes):  # single-object benchmarks: the box around the GT mask
        gt = read_mask(sample.mask_uri)
        gt_boxes = pixel_box(gt)[None] if gt.any() else np.zeros((0, 4))
    iou = best_box_iou(np.asarray(obj["box"], float), gt_boxes)
    record = {"box": [round(float(v), 2) for v in obj["box"]], "iou": iou, "correct": iou >= 0.5,
              "n_gt": int(len(gt_boxes)), "fallback": obj["fallback"], "rank": obj["rank"]}
    return Result(record)


def _summarize_localization(results: list[Result]) -> dict:
    # CorLoc over images that have an object: an image without boxes cannot be localized.
    scored = [r for r in results if r.record["n_gt"] > 0]
    return {"corloc": float(np.mean([r.record["correct"] for r in scored])) if scored else float("nan"),
            "n_without_gt": len(results) - len(scored),
            "n_fallback": int(sum(r.record["fallback"] for r in results))}


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("segmentation", "single-object segmentation of the best-scored object: mIoU, pixel accuracy, max F-beta",
         _mask_samples, lambda cfg: dataclasses.replace(cfg, soft_masks=True), _evaluate_segmentation,
         _summarize_segmentation, ("miou", "accuracy", "max_f"),
         ("image_id", "object", "height", "width", "segmentation", "soft", "fallback", "rank")),
    Task("localization", "localization by the best-scored box: CorLoc (box IoU >= 0.5 with any GT box)",
         _box_samples, lambda cfg: cfg, _evaluate_localization, _summarize_localization, ("corloc",)),
]}
