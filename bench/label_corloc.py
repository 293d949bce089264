"""Prints docs/objects-results.md's CorLoc rows of `label` runs (VOC07, COCO128), tune and check.

    DATA=path/to/data
    deep-spectral label --dataset voc --root $DATA/voc2007/VOC2007 --out OUT     # LABEL_DIGEST: OUT/runs/*.json
    python -m bench.label_corloc --labels OUT --digest LABEL_DIGEST --voc-root $DATA/voc2007/VOC2007
    python -m bench.label_corloc --labels OUT --digest LABEL_DIGEST --images $DATA/coco128/images \\
        --annotations $DATA/coco128/instances_train2017.json --parts name

For each image, the top-scored object's box (and, for comparison, the best of its objects:
the ceiling a better ranking could reach) against every ground-truth box; images without a
box are left out, as CorLoc does. --parts position (VOC07): tune = even index in the sorted
listing, check = odd; --parts name (COCO128): tune = even number in the file name, check = odd.
--frame A/B rescores the stored rows by label's frame rule first (an object covering more than
A of the grid and more than B of its border scores 0: LabelConfig.frame_area, frame_border).
"""
from __future__ import annotations

import argparse
import re

import numpy as np

from jobs.label import object_rows
from pipeline.evaluation.object_metrics import best_box_iou
from pipeline.io.ground_truth import coco_boxes, voc_boxes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", required=True)
    p.add_argument("--digest", required=True)
    p.add_argument("--voc-root")
    p.add_argument("--split", default="trainval")
    p.add_argument("--images")
    p.add_argument("--annotations")
    p.add_argument("--box", default="box", choices=["box", "patch_box"])
    p.add_argument("--parts", default="position", choices=["position", "name"])
    p.add_argument("--frame", default="", metavar="A/B", help="rescore by the frame rule at area A, border B")
    a = p.parse_args()
    frame = tuple(float(v) for v in a.frame.split("/")) if a.frame else None
    samples = voc_boxes(a.voc_root, a.split) if a.voc_root else coco_boxes(a.images, a.annotations)
    objects: dict[str, list[dict]] = {}
    for row in object_rows(a.labels, a.digest, ["image_id", "box", "patch_box", "score", "rank", "grid_area",
                                                 "border"]):
        if frame and row["grid_area"] > frame[0] and row["border"] > frame[1]:
            row["score"] = 0.0
        objects.setdefault(row["image_id"], []).append(row)
    parts = {"tune": [], "check": []}
    for index, s in enumerate(sorted(samples, key=lambda s: s.image_id)):
        if len(s.boxes) and s.image_id in objects:
            key = index if a.parts == "position" else int(re.findall(r"\d+", s.image_id)[-1])
            parts["tune" if key % 2 == 0 else "check"].append(s)
    print(f"{sum(map(len, parts.values()))} images with boxes and labels; boxes from {a.box}")
    print("| part | images | CorLoc top box | CorLoc Fiedler object | any object (ceiling) | objects per image |")
    print("|---|---|---|---|---|---|")
    for name, part in parts.items():
        top, fiedler, anyone, count = [], [], [], []
        for s in part:
            objs = sorted(objects[s.image_id], key=lambda r: (-r["score"], r["rank"]))
            ious = [best_box_iou(np.array(o[a.box]), s.boxes) for o in objs]
            top.append(ious[0] >= 0.5)
            fiedler.append(next(i for i, o in zip(ious, objs) if o["rank"] == 0) >= 0.5)
            anyone.append(max(ious) >= 0.5)
            count.append(len(objs))
        print(f"| {name} | {len(part)} | {100 * np.mean(top):.1f} | {100 * np.mean(fiedler):.1f} | "
              f"{100 * np.mean(anyone):.1f} | {np.mean(count):.1f} |")


if __name__ == "__main__":
    main()
