"""Prints docs/sparse.md's graph-quality tables: graph kinds against each other on ECSSD tune/check, no forward pass.

    DATA=path/to/data
    deep-spectral extract $DATA/ecssd/images --out OUT --store-features
    python -m bench.graph_quality --shards OUT [--ecssd $DATA/ecssd] [--upsample 1|2|4] \\
        [--kinds dense lowrank sparse] [--topk 20] [--halves]

OUT holds ECSSD eigen rows written with --store-features (default extraction otherwise).
--upsample is the graph's extract.graph.upsample, --topk the sparse kind's extract.graph.sparsify_topk.
Tune = ECSSD 0001-0050, check = 0251-0300 (docs/sparse.md); --halves: the whole dev set,
0001-0250 / 0251-0500 (docs/objects-results.md's split). Per image and graph kind: the
graph from the stored features, 15 eigenpairs, the Fiedler mask (mean threshold, largest
component) unrefined and guided-filtered, IoU against the ground truth; prints mean IoU.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from pipeline.config import EigenConfig, ExtractConfig, GraphConfig
from pipeline.evaluation.object_metrics import mask_iou
from pipeline.features.geometry import geometry_of
from pipeline.io.ground_truth import read_mask
from pipeline.io.images import decode_image
from pipeline.io.schema import features_of
from pipeline.io.shards import EIGEN_DIR, scan_batches
from pipeline.io.sources import read_bytes
from pipeline.objects.masks import SegmentConfig, segment
from pipeline.spectral.affinity import image_affinity
from pipeline.spectral.spectrum import graph_spectrum

ROOT = Path(__file__).resolve().parents[1]

SUBSETS = {"tune": [f"{i:04d}.jpg" for i in range(1, 51)], "check": [f"{i:04d}.jpg" for i in range(251, 301)]}
HALVES = {"tune": [f"{i:04d}.jpg" for i in range(1, 251)], "check": [f"{i:04d}.jpg" for i in range(251, 501)]}
COLUMNS = ["image_id", "grid_h", "grid_w", "feature_dim", "features", "height", "width", "input_height",
           "input_width", "patch_size", "k"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True)
    p.add_argument("--ecssd", default=str(ROOT.parent / "shared" / "data" / "ecssd"),
                   help="ECSSD's folder (images, masks)")
    p.add_argument("--upsample", type=int, default=1)
    p.add_argument("--kinds", nargs="+", default=["dense", "lowrank"])
    p.add_argument("--topk", dest="knn", metavar="K", type=int, default=20,
                   help="neighbours per node of the sparse kind")
    p.add_argument("--halves", action="store_true", help="all 500 images, halves 0001-0250 / 0251-0500")
    a = p.parse_args()
    parts = HALVES if a.halves else SUBSETS
    u, part_of = a.upsample, {i: name for name, ids in parts.items() for i in ids}
    ious: dict[tuple, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    for batch in scan_batches(a.shards, EIGEN_DIR, COLUMNS, config_digest=ExtractConfig(store_features=True).digest(),
                              image_ids=sorted(part_of)):
        for row in batch.to_pylist():
            image = decode_image(read_bytes(f"{a.ecssd}/images/{row['image_id']}"))
            gt = read_mask(f"{a.ecssd}/masks/{row['image_id'][:-4]}.png")
            grid = (row["grid_h"] * u, row["grid_w"] * u)
            geom = geometry_of({**row, "grid_h": grid[0], "grid_w": grid[1]}, ExtractConfig().backbone.long_side)
            for kind in a.kinds:
                start = time.perf_counter()
                graph = GraphConfig(kind=kind, upsample=u, sparsify_topk=a.knn if kind == "sparse" else None)
                spectrum = graph_spectrum(image_affinity(features_of(row), image, graph), grid, EigenConfig(k=15))
                seconds.setdefault(kind, []).append(time.perf_counter() - start)
                for refine in ("none", "guided"):
                    mask = segment(spectrum.eigenvectors, image, geom, SegmentConfig(refine=refine)).mask
                    ious.setdefault((kind, refine, part_of[row["image_id"]]), []).append(mask_iou(mask, gt))
    split = "0001-0250 / 0251-0500" if a.halves else "0001-0050 / 0251-0300"
    print(f"ECSSD, upsample {u}, tune {split}, mean IoU x 100\n")
    print("| graph | refinement | tune | check | graph + eigensolve ms (median) |\n|---|---|---|---|---|")
    for kind in a.kinds:
        for refine in ("none", "guided"):
            tune, check = (100 * np.mean(ious[(kind, refine, part)]) for part in ("tune", "check"))
            print(f"| {kind} | {refine} | {tune:.1f} | {check:.1f} | {1e3 * np.median(seconds[kind]):.0f} |")


if __name__ == "__main__":
    main()
