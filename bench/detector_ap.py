"""Prints docs/detector.md's COCO instances table: label runs scored as they stand.

    DATA=path/to/data
    A=$DATA/coco_instances/instances.json
    python -m bench.detector_ap --labels OUT --digest LABEL_DIGEST [--digest ...] --annotations $A

Each row is one label run of OUT (the cuts, or `label --detector`), every object with the score
the run gave it; class-agnostic COCO box AP50, box AP, mask AP50, mask AP and box AR100 (pycocotools)
in %, on the tune part (even COCO image ids) and the check part (odd).
"""
from __future__ import annotations

import argparse
import json

from bench.object_rules import predictions
from jobs.label import object_rows
from pipeline.evaluation.coco_ap import coco_ap
from pipeline.io.coco_instances import coco_ids_by_file_name

COLUMNS = ["image_id", "height", "width", "box", "score", "segmentation"]
METRICS = [("box AP50", "box_ap50"), ("box AP", "box_ap"), ("mask AP50", "mask_ap50"), ("mask AP", "mask_ap"),
           ("box AR100", "box_ar100")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", required=True)
    p.add_argument("--digest", required=True, action="append", help="a label run's digest (repeatable: one row each)")
    p.add_argument("--annotations", required=True)
    a = p.parse_args()
    ids = coco_ids_by_file_name(a.annotations)
    with open(a.annotations) as f:
        gt = json.load(f)
    print("| label run | " + " | ".join(f"{part} {name}" for part in ("tune", "check") for name, _ in METRICS) + " |")
    print("|---|" + "---|" * 2 * len(METRICS))
    for digest in a.digest:
        rows = list(object_rows(a.labels, digest, COLUMNS))
        labelled = sorted({ids[r["image_id"]] for r in rows})
        parts = {"tune": [i for i in labelled if i % 2 == 0], "check": [i for i in labelled if i % 2 == 1]}
        preds = predictions(rows, ids, lambda r: True, lambda r: r["score"])
        cells = []
        for part in ("tune", "check"):
            m = coco_ap(gt, preds, parts[part])
            cells += [m[key] for _, key in METRICS]
        print(f"| {digest} ({len(rows) / max(1, len(labelled)):.1f} objects/image) | "
              + " | ".join(f"{100 * c:.1f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
