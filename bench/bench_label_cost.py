"""What labelling adds to extraction, per image, on real images under one load.

    python -m bench.bench_label_cost [--images ../shared/data/coco_instances/images] [--n 20]

In one process, image by image: the spectral core (SpectralExtractor.extract: decode, forward
pass, graph, eigensolve, shard row), then what `label` does on top in the same actor: object
discovery (the iterative cut's eigensolves), pixel refinement of every object (guided filter)
and RLE encoding (pipeline.objects.instances, pipeline.io.coco_instances). Stages alternate
per image, so both see the same load. Prints medians and the ratio label / extract.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from pipeline.batch.extractor import SpectralExtractor
from pipeline.config import ExtractConfig
from pipeline.features.geometry import geometry_of
from pipeline.io.coco_instances import encode_mask
from pipeline.io.sources import list_images
from pipeline.objects.discovery import discover
from pipeline.objects.instances import LabelConfig, soft_masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="../shared/data/coco_instances/images")
    parser.add_argument("--n", type=int, default=20)
    args = parser.parse_args()
    cfg, label_cfg = ExtractConfig(), LabelConfig()
    extractor = SpectralExtractor(cfg, batch_size=1)
    refs = list_images(args.images)[:args.n + 1]
    rows = []
    for i, ref in enumerate(refs):
        start = time.perf_counter()
        item = next(iter(extractor.extract([ref])))
        t_extract = time.perf_counter() - start
        geom = geometry_of(item.row, cfg.backbone.long_side)
        start = time.perf_counter()
        found = discover(item.spectrum.eigenvectors, item.spectrum.eigenvalues, item.affinity, label_cfg.discovery)
        t_discover = time.perf_counter() - start
        start = time.perf_counter()
        masks = [s > 0.5 for s in soft_masks([c.mask for c in found], item.image, geom, label_cfg)]
        t_refine = time.perf_counter() - start
        start = time.perf_counter()
        [encode_mask(m) for m in masks]
        t_encode = time.perf_counter() - start
        if i:  # the first image also pays the model's warm-up
            rows.append((t_extract, t_discover, t_refine, t_encode, len(found), item.image.shape[0] * item.image.shape[1]))
    med = np.median(np.array(rows), axis=0)
    extract_s, objects_s = med[0], med[1] + med[2] + med[3]
    print(f"{len(rows)} images from {args.images} (median {med[5] / 1e6:.2f} MP, {med[4]:.0f} objects), "
          f"default ExtractConfig and LabelConfig, one process, seconds per image (median):\n")
    print("| extract (decode+forward+graph+eig) | discovery | refine (guided) | RLE | label total | label / extract |")
    print("|---|---|---|---|---|---|")
    print(f"| {extract_s:.3f} | {med[1]:.3f} | {med[2]:.3f} | {med[3]:.4f} | {extract_s + objects_s:.3f} | "
          f"{(extract_s + objects_s) / extract_s:.2f}× |")


if __name__ == "__main__":
    main()
