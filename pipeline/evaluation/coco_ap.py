"""Class-agnostic COCO AP with pycocotools' COCOeval, as unsupervised detectors are scored.

Every ground-truth category is merged into one ("object") and every prediction is put in
it, so AP measures finding objects, not naming them. `iscrowd` regions are kept and treated
as COCOeval treats them (matches to them are neither true nor false positives).
"""
from __future__ import annotations

import contextlib
import copy
import io

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# COCOeval.stats indices: 0 AP, 1 AP50, 2 AP75, 8 AR at 100 detections.
STATS = {"ap": 0, "ap50": 1, "ap75": 2, "ar100": 8}


def class_agnostic(gt: dict) -> dict:
    """A COCO instances dict -> a copy with one category (id 1) holding every annotation."""
    out = copy.deepcopy(gt)
    out["categories"] = [{"id": 1, "name": "object", "supercategory": "object"}]
    for ann in out["annotations"]:
        ann["category_id"] = 1
    return out


def coco_ap(gt: dict, predictions: list[dict], image_ids: list[int] | None = None) -> dict[str, float]:
    """Ground-truth instances dict, predictions (COCO results with `bbox`, `segmentation`
    RLE and `score`) -> {box_ap, box_ap50, box_ap75, box_ar100, mask_ap, ...}, in [0, 1],
    over `image_ids` (default: every ground-truth image)."""
    truth = _coco(class_agnostic(gt))
    ids = sorted(image_ids if image_ids is not None else truth.getImgIds())
    wanted = set(ids)
    results = [{**p, "category_id": 1} for p in predictions if p["image_id"] in wanted]
    metrics: dict[str, float] = {}
    for iou_type, prefix in (("bbox", "box"), ("segm", "mask")):
        usable = [p for p in results if iou_type == "bbox" or "segmentation" in p]
        if not usable:
            metrics.update({f"{prefix}_{k}": 0.0 for k in STATS})
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            found = truth.loadRes(copy.deepcopy(usable))
            ev = COCOeval(truth, found, iou_type)
            ev.params.imgIds = ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        metrics.update({f"{prefix}_{k}": max(0.0, float(ev.stats[i])) for k, i in STATS.items()})
    return metrics


def _coco(data: dict) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco
