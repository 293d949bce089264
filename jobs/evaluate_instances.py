"""`deep-spectral evaluate instances`: the objects `label` writes, scored by class-agnostic COCO
AP / AP50 / AP75 / AR100 for boxes and masks (pycocotools COCOeval, every category merged).

    deep-spectral evaluate instances --images coco/images --annotations instances.json --out OUT

Labels go to --shards (default OUT/labelled), the same folder layout `label` writes, so a
rerun with other scoring options reuses the extraction (and with --store-features, the
forward passes). The report is OUT/metrics.json with flat keys box_ap, box_ap50, box_ap75,
box_ar100, mask_ap, mask_ap50, mask_ap75, mask_ar100, n_images, config and timings.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import fsspec

from jobs import label
from jobs.options import dry_run
from pipeline.objects.instances import label_digest
from pipeline.evaluation.coco_ap import coco_ap
from pipeline.io.ground_truth import coco_boxes
from pipeline.io.sources import ImageRef


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--images", required=True, help="folder of images")
    data.add_argument("--annotations", required=True, help="COCO instances JSON with boxes and masks")
    data.add_argument("--limit", type=int, default=0, help="only the first N images (sorted by file name)")
    run = parser.add_argument_group("outputs and running")
    run.add_argument("--out", required=True, help="folder for metrics.json")
    run.add_argument("--json", default=None, help="also write the metrics JSON here")
    run.add_argument("--shards", default=None, help="the label run's folder (default OUT/labelled)")
    run.add_argument("--local", action="store_true", help="label in this process instead of on Ray")
    label.OPTIONS.add_to(parser)


def run(args: argparse.Namespace) -> dict:
    configs = label.configs_from_args(args)
    cfg, label_cfg, runtime = configs["extract"], configs["label"], configs["runtime"]
    if args.dry_run:
        dry_run(configs, {"extract": cfg.digest(), "label": label_digest(cfg.digest(), label_cfg)})
        raise SystemExit(0)
    samples = coco_boxes(args.images, args.annotations)
    if args.limit:
        samples = samples[:args.limit]
    out = args.out.rstrip("/")
    shards = args.shards or f"{out}/labelled"
    os.makedirs(out, exist_ok=True)
    started = time.time()
    summary = label.run_label(None, shards, cfg, label_cfg, runtime, [ImageRef(s.image_id, s.uri) for s in samples],
                              local=args.local, gallery=0, coco_annotations=args.annotations)
    with fsspec.open(summary["instances"]["uri"]) as f:
        predictions = json.load(f)["annotations"]
    with fsspec.open(args.annotations) as f:
        gt = json.load(f)
    ids = [s.coco_id for s in samples]
    scored = set(ids)
    report = {
        "task": "instances",
        **coco_ap(gt, predictions, ids),
        "n_images": len(ids),
        "n_predictions": sum(p["image_id"] in scored for p in predictions),
        "n_failed": summary["failed"],
        "seconds": round(time.time() - started, 2),
        "n_labelled": summary["processed"] + summary["failed"],
        "config_digest": summary["config_digest"],
        "config": {"extract": cfg.to_dict(), "label": label_cfg.to_dict(),
                   "data": {"images": args.images, "annotations": args.annotations, "limit": args.limit},
                   "shards": shards},
    }
    for path in filter(None, [args.json, f"{out}/metrics.json"]):
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
    keys = ["box_ap", "box_ap50", "box_ar100", "mask_ap", "mask_ap50", "mask_ar100", "n_images"]
    print("  ".join(keys))
    print("  ".join(f"{report[k]:.4f}" if isinstance(report[k], float) else str(report[k]) for k in keys))
    return report
