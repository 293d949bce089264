"""Prints docs/objects-results.md's "Cost" table: what labelling adds to extraction, per image, on real images under one load.

    python -m bench.bench_label_cost [--images DATA/coco_instances/images] [--n 20] [--subsample 1,4]

In one process, image by image: the spectral core (SpectralExtractor.extract: decode, forward
pass, graph, eigensolve, shard row), then what `label` does on top in the same actor: object
discovery (the iterative cut's eigensolves), pixel refinement of every object (guided filter)
and RLE encoding (pipeline.objects.instances, pipeline.io.coco_instances). Stages alternate
per image, so all see the same load. Prints medians and the ratio label / extract, one row
per --subsample (the setting label.guided_subsample: 1 = the exact guided filter, s > 1 = the
fast one; default: LabelConfig's own), each refining the same objects of the same images.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from pipeline.batch.extractor import SpectralExtractor
from pipeline.config import ExtractConfig
from pipeline.features.geometry import geometry_of
from pipeline.io.coco_instances import encode_mask
from pipeline.io.sources import list_images
from pipeline.objects.discovery import discover
from pipeline.objects.instances import LabelConfig, soft_masks

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "coco_instances" / "images"))
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--subsample", default=str(LabelConfig().guided_subsample),
                        help="comma-separated guided filter block sizes, one row each")
    args = parser.parse_args()
    cfg, label_cfg = ExtractConfig(), LabelConfig()
    variants = [dataclasses.replace(label_cfg, guided_subsample=int(s)) for s in args.subsample.split(",")]
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
        t_refine, t_encode = [], []
        for variant in variants:
            start = time.perf_counter()
            masks = [s > 0.5 for s in soft_masks([c.mask for c in found], item.image, geom, variant)]
            t_refine.append(time.perf_counter() - start)
            start = time.perf_counter()
            [encode_mask(m) for m in masks]
            t_encode.append(time.perf_counter() - start)
        if i:  # the first image also pays the model's warm-up
            rows.append([t_extract, t_discover, len(found), item.image.shape[0] * item.image.shape[1]]
                        + t_refine + t_encode)
    med = np.median(np.array(rows), axis=0)
    extract_s, n = med[0], len(variants)
    print(f"{len(rows)} images from {args.images} (median {med[3] / 1e6:.2f} MP, {med[2]:.0f} objects), "
          f"default ExtractConfig and LabelConfig but the guided subsample, one process, seconds per image "
          f"(median):\n")
    print("| guided subsample | extract (decode+forward+graph+eig) | discovery | refine (guided) | RLE | label total "
          "| label / extract |")
    print("|---|---|---|---|---|---|---|")
    for k, variant in enumerate(variants):
        refine_s, encode_s = med[4 + k], med[4 + n + k]
        objects_s = med[1] + refine_s + encode_s
        print(f"| {variant.guided_subsample} | {extract_s:.3f} | {med[1]:.3f} | {refine_s:.3f} | {encode_s:.4f} | "
              f"{extract_s + objects_s:.3f} | {(extract_s + objects_s) / extract_s:.2f}× |")


if __name__ == "__main__":
    main()
