"""Prints docs/objects-results.md's COCO instances rows: rules for label's objects.

    DATA=path/to/data
    deep-spectral label $DATA/coco_instances/images --out OUT      # LABEL_DIGEST: OUT/runs/*.json
    python -m bench.object_rules --labels OUT --digest LABEL_DIGEST --annotations $DATA/coco_instances/instances.json

Measured offline on the stored label run.

Reads OUT/labels (one run with many objects per image and no stopping rule), applies each
rule by filtering and rescoring the stored rows (rank, eigenvalue, border, grid area), and
prints class-agnostic COCO AP on the tune part (even COCO image ids) and the check part (odd).
--frame A/B[,A/B...] adds the cut score under label's frame rule at each (grid area > A and
border > B scores 0: LabelConfig.frame_area, frame_border); --rules picks rules by name.
"""
from __future__ import annotations

import argparse
import json


from jobs.label import object_rows
from pipeline.evaluation.coco_ap import coco_ap
from pipeline.io.coco_instances import coco_ids_by_file_name

COLUMNS = ["image_id", "height", "width", "box", "patch_box", "score", "segmentation", "rank", "eigenvalue",
           "border", "grid_area", "fallback"]


def predictions(rows, ids, keep, score, box="box"):
    out = []
    for r in rows:
        if not keep(r):
            continue
        x0, y0, x1, y1 = r[box]
        out.append({"image_id": ids[r["image_id"]], "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score(r),
                    "segmentation": {"size": [r["height"], r["width"]], "counts": r["segmentation"]}})
    return out


RULES = {
    "fiedler only": (lambda r: r["rank"] == 0, lambda r: 1.0),
    "rank<2": (lambda r: r["rank"] < 2, lambda r: 1 / (r["rank"] + 1)),
    "rank<4": (lambda r: r["rank"] < 4, lambda r: 1 / (r["rank"] + 1)),
    "all, rank score": (lambda r: True, lambda r: 1 / (r["rank"] + 1)),
    "all, cut score": (lambda r: True, lambda r: (1 - min(r["eigenvalue"], 1)) / (r["rank"] + 1)),
    "all, inner score": (lambda r: True, lambda r: (1 - r["border"]) / (r["rank"] + 1)),
    "all, 1-eig": (lambda r: True, lambda r: 1 - min(r["eigenvalue"], 1)),
    "all, inner": (lambda r: True, lambda r: 1 - r["border"]),
    "all, inner x 1-eig": (lambda r: True, lambda r: (1 - r["border"]) * (1 - min(r["eigenvalue"], 1))),
    "eig<0.9, rank": (lambda r: r["eigenvalue"] < 0.9 or r["rank"] == 0, lambda r: 1 / (r["rank"] + 1)),
    "border<0.5, rank": (lambda r: r["border"] < 0.5 or r["rank"] == 0, lambda r: 1 / (r["rank"] + 1)),
    "border<0.25, inner": (lambda r: r["border"] < 0.25, lambda r: 1 - r["border"]),
}


def frame_rule(area: float, border: float):
    """The cut score with label's frame rule (pipeline.objects.instances.is_frame) on stored rows."""
    def score(r):
        if r["grid_area"] > area and r["border"] > border:
            return 0.0
        return (1 - min(r["eigenvalue"], 1)) / (r["rank"] + 1)
    return (lambda r: True, score)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", required=True)
    p.add_argument("--digest", required=True)
    p.add_argument("--annotations", required=True)
    p.add_argument("--box", default="box", choices=["box", "patch_box"])
    p.add_argument("--frame", default="", help="A/B,...: the cut score with the frame rule at each")
    p.add_argument("--rules", action="append", default=[], metavar="NAME", help="a RULES name, e.g. \"all, cut score\" (repeatable; default: all)")
    a = p.parse_args()
    rules = {k: v for k, v in RULES.items() if not a.rules or k in a.rules}
    for spec in filter(None, a.frame.split(",")):
        area, border = (float(v) for v in spec.split("/"))
        rules[f"all, cut score, frame {area:g}/{border:g}"] = frame_rule(area, border)
    rows = list(object_rows(a.labels, a.digest, COLUMNS))
    ids = coco_ids_by_file_name(a.annotations)
    with open(a.annotations) as f:
        gt = json.load(f)
    labelled = sorted({ids[r["image_id"]] for r in rows})
    parts = {"tune": [i for i in labelled if i % 2 == 0], "check": [i for i in labelled if i % 2 == 1]}
    print(f"{len(rows)} objects on {len(labelled)} images (tune {len(parts['tune'])}, check {len(parts['check'])});"
          f" boxes from {a.box}")
    print("| rule | tune box AP50 | tune box AP | tune mask AP50 | check box AP50 | check box AP | check mask AP50 |")
    print("|---|---|---|---|---|---|---|")
    for name, (keep, score) in rules.items():
        preds = predictions(rows, ids, keep, score, a.box)
        cells = []
        for part in ("tune", "check"):
            m = coco_ap(gt, preds, parts[part])
            cells += [m["box_ap50"], m["box_ap"], m["mask_ap50"]]
        print(f"| {name} | " + " | ".join(f"{100 * c:.1f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
