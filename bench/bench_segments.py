"""Prints docs/semantic.md's "Cost of segments" table: what per-image segments add to extraction time.

    python -m bench.bench_segments [--images 10] [--data-root DATA]      # DATA holds coco128/images

The same COCO128 images through SpectralExtractor (in this process, one batch per image,
after a warm-up image) without segments, with 15 mask-pooled segments and with 15 crop-CLS
segments (the paper's re-embedding, 224 px crops); prints seconds per image and the ratio to
extraction without segments.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from pipeline.config import ExtractConfig, SegmentsConfig
from pipeline.batch.extractor import SpectralExtractor
from pipeline.io.sources import list_images

ROOT = Path(__file__).resolve().parents[1]


def seconds_per_image(cfg: ExtractConfig, refs) -> tuple[float, float]:
    """(median seconds per image, mean segments per image)."""
    extractor = SpectralExtractor(cfg, batch_size=1)
    extractor(refs[:1])  # warm-up: first-call allocations and thread pools
    times, segments = [], []
    for ref in refs:
        started = time.perf_counter()
        rows, errors = extractor([ref])
        times.append(time.perf_counter() - started)
        segments += [r["n_segments"] for r in rows]
    return float(np.median(times)), float(np.mean(segments))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"), metavar="DATA")
    args = parser.parse_args()
    refs = list_images(f"{args.data_root}/coco128/images")[:args.images]
    modes = {"none": SegmentsConfig(),
             "pool": SegmentsConfig(n_segments=15, features="pool"),
             "crop": SegmentsConfig(n_segments=15, features="crop")}
    results = {name: seconds_per_image(ExtractConfig(segments=seg), refs) for name, seg in modes.items()}
    base = results["none"][0]
    print(f"COCO128 first {len(refs)} images, offline backbone, long side 448, k = 15, CPU, median per image")
    print(f"{'segments':>8} {'fg segments/img':>15} {'s/image':>8} {'x none':>7}")
    for name, (seconds, n) in results.items():
        print(f"{name:>8} {n:>15.1f} {seconds:>8.3f} {seconds / base:>7.2f}")


if __name__ == "__main__":
    main()
