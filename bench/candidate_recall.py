"""Prints docs/objects-results.md's candidate table (COCO instances): which added candidates per image raise box AP50 / AR100.

    DATA=path/to/data
    deep-spectral extract $DATA/coco_instances/images --out OUT --store-features
    python -m bench.candidate_recall --shards OUT --annotations $DATA/coco_instances/instances.json

Offline on eigen rows stored with features (`--store-features`), patch boxes only (no pixel
refinement, so cheap): the default iterative cut, then candidates appended with lower scores
(appending below every earlier score can only add recall to COCO AP). Tune = even COCO image
ids, check = odd, as docs/objects-results.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np

from pipeline.config import ExtractConfig
from pipeline.evaluation.coco_ap import coco_ap
from pipeline.features.geometry import geometry_of
from pipeline.io.coco_instances import coco_ids_by_file_name
from pipeline.io.schema import eigenvectors_of, features_of
from pipeline.io.shards import EIGEN_DIR, scan_batches
from pipeline.objects.discovery import DiscoveryConfig, discover
from pipeline.objects.localize import LocalizeConfig, component_candidates, components, foreground_mask, mask_box
from pipeline.spectral.affinity import image_affinity


def variants(vecs, vals, W, grid):
    """name -> [(patch mask, score)] for one image."""
    it = discover(vecs, vals, W, DiscoveryConfig())
    base = [(c.mask, (1 - min(c.eigenvalue, 1)) / (c.rank + 1)) for c in it]
    low = min(s for _, s in base) if base else 1.0
    out = {"iterative (default)": base}
    # every 8-connected part of each eigenvector 1..3's positive and negative side
    parts = []
    for i in range(1, min(4, len(vecs))):
        for sign in (1, -1):
            fg, degenerate = foreground_mask(sign * vecs[i], 0.0)
            if not degenerate:
                parts += [p for p in components(fg) if p.mean() >= 0.005]
    out["+ parts of vecs 1-3 (both signs)"] = base + [(p, low * 0.5 / (j + 1)) for j, p in enumerate(parts)]
    comps = [m for _, m in component_candidates(vecs, LocalizeConfig(threshold="mean", min_area=0.005))]
    out["+ components (mean thr)"] = base + [(p, low * 0.5 / (j + 1)) for j, p in enumerate(comps)]
    it16 = discover(vecs, vals, W, DiscoveryConfig(max_objects=16, min_area=0.002))
    out["iterative 16 cuts, min area 0.002"] = [(c.mask, (1 - min(c.eigenvalue, 1)) / (c.rank + 1)) for c in it16]
    it0 = discover(vecs, vals, W, DiscoveryConfig(threshold=0.0))
    out["+ iterative at threshold 0"] = base + [(c.mask, low * 0.5 / (c.rank + 1)) for c in it0]
    out["all of the above"] = (out["iterative 16 cuts, min area 0.002"]
                               + [(m, s * 0.5) for m, s in out["+ parts of vecs 1-3 (both signs)"][len(base):]]
                               + [(m, s * 0.5) for m, s in out["+ iterative at threshold 0"][len(base):]])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True)
    p.add_argument("--annotations", required=True)
    a = p.parse_args()
    cfg = ExtractConfig(store_features=True)
    graph = dataclasses.replace(cfg.graph, upsample=1)
    ids = coco_ids_by_file_name(a.annotations)
    preds: dict[str, list] = {}
    cols = ["image_id", "k", "grid_h", "grid_w", "feature_dim", "features", "eigenvectors", "eigenvalues",
            "height", "width", "input_height", "input_width", "patch_size"]
    for batch in scan_batches(a.shards, EIGEN_DIR, cols, config_digest=cfg.digest(), batch_rows=16):
        for row in batch.to_pylist():
            vecs, vals = eigenvectors_of(row), np.asarray(row["eigenvalues"])
            feats = features_of(row)
            W = image_affinity(feats, np.zeros((row["height"], row["width"], 3), np.uint8), graph)
            geom = geometry_of(row, cfg.backbone.long_side)
            for name, cands in variants(vecs, vals, W, geom).items():
                for mask, score in cands:
                    if mask.any():
                        x0, y0, x1, y1 = mask_box(mask, geom)
                        preds.setdefault(name, []).append({"image_id": ids[row["image_id"]], "score": float(score),
                                                           "bbox": [x0, y0, x1 - x0, y1 - y0]})
    with open(a.annotations) as f:
        gt = json.load(f)
    halves = {"tune": [i for i in ids.values() if i % 2 == 0], "check": [i for i in ids.values() if i % 2 == 1]}
    print("| candidates | per image | box AP50 tune | check | box AR100 tune | check |\n|---|---|---|---|---|---|")
    for name, ps in preds.items():
        m = {h: coco_ap(gt, ps, part) for h, part in halves.items()}
        print(f"| {name} | {len(ps) / len(ids):.1f} | {100 * m['tune']['box_ap50']:.1f} | "
              f"{100 * m['check']['box_ap50']:.1f} | {100 * m['tune']['box_ar100']:.1f} | {100 * m['check']['box_ar100']:.1f} |")


if __name__ == "__main__":
    main()
