"""Prints docs/objects-results.md's `evaluate` rows per tune/check part: means of `evaluate` runs' per-image records.

    DATA=path/to/data
    deep-spectral evaluate segmentation --images $DATA/weizmann_horse/images \\
        --masks $DATA/weizmann_horse/masks --out OUT1
    deep-spectral evaluate segmentation --images $DATA/weizmann_horse/images --masks $DATA/weizmann_horse/masks \\
        --out OUT2 --store-features --self-train
    python -m bench.evaluate_parts --split parity --metric iou OUT1 OUT2

Each OUT is an `evaluate` output folder (OUT/per_image.jsonl); --split is bench.single_object's
rule (half | parity | name) over the sorted image ids of the first OUT, so every run is scored on
the same parts. Images a run failed on count as missing, and the table says how many were scored.
"""
from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import numpy as np

from bench.single_object import _part


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outs", nargs="+")
    p.add_argument("--split", required=True, help="half | parity | name")
    p.add_argument("--metric", default="iou", help="per-image record field, e.g. iou or corloc")
    a = p.parse_args()
    runs = {}
    for out in a.outs:
        with open(f"{out.rstrip('/')}/per_image.jsonl") as f:
            runs[out] = {r["image_id"]: r for r in map(json.loads, f)}
    parts = _part([SimpleNamespace(image_id=i) for i in runs[a.outs[0]]], a.split)
    print(f"| run | tune {a.metric} | check {a.metric} | images (tune, check) |")
    print("|---|---|---|---|")
    for out, records in runs.items():
        values = {pt: [float(r[a.metric]) for i, r in records.items() if parts.get(i) == pt] for pt in ("tune", "check")}
        print(f"| {out} | {100 * np.mean(values['tune']):.1f} | {100 * np.mean(values['check']):.1f} | "
              f"{len(values['tune'])}, {len(values['check'])} |")


if __name__ == "__main__":
    main()
