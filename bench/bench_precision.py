"""Prints docs/scale.md's "Precision of the forward pass" table: bf16 against fp32 on one benchmark's images.

    DATA=path/to/data
    deep-spectral extract $DATA/ecssd/images --out FP32 --store-features --local
    deep-spectral extract $DATA/ecssd/images --out BF16 --store-features --precision bf16 --local
    python -m bench.bench_precision --shards FP32 --other BF16 --images $DATA/ecssd/images \\
        --masks $DATA/ecssd/masks --split half
    python -m bench.single_object --shards BF16 --images $DATA/ecssd/images --masks $DATA/ecssd/masks --split half \\
        --levers fiedler/none,fiedler/guided --precision bf16   # mIoU / CorLoc of each (and on FP32)

Reads two extractions of the same images that differ only in BackboneConfig.precision and
prints, per part of --split (bench.single_object's rules): the largest eigenvalue difference,
the median and largest angle between the Fiedler vectors, the share of images whose Fiedler
patch mask (bench.single_object's `fiedler` cells) is identical, and the mean IoU between the
two patch masks.
"""
from __future__ import annotations

import argparse

import numpy as np

from bench.single_object import add_benchmark_arguments, benchmark_parts
from pipeline.io.schema import eigenvectors_of
from pipeline.io.shards import EIGEN_DIR, scan_batches
from pipeline.objects.masks import patch_mask

COLUMNS = ["image_id", "config_digest", "k", "grid_h", "grid_w", "eigenvalues", "eigenvectors"]


def stored(shards: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """image id -> (eigenvalues (k,), eigenvectors (k, h, w)) of the one extraction in SHARDS."""
    out, digests = {}, set()
    for batch in scan_batches(shards, EIGEN_DIR, COLUMNS):
        for row in batch.to_pylist():
            digests.add(row["config_digest"])
            out[row["image_id"]] = (np.asarray(row["eigenvalues"]), eigenvectors_of(row))
    if len(digests) != 1:
        raise SystemExit(f"{shards}: expected one extraction, found configs {sorted(digests)}")
    return out


def compare(a: tuple, b: tuple) -> tuple[float, float, bool, float]:
    """(max |dλ|, Fiedler angle in degrees, identical Fiedler patch masks, their IoU)."""
    (la, va), (lb, vb) = a, b
    fa, fb = va[1].ravel(), vb[1].ravel()
    cos = abs(float(fa @ fb)) / max(np.linalg.norm(fa) * np.linalg.norm(fb), 1e-30)
    ma, mb = patch_mask(va)[0], patch_mask(vb)[0]
    union = (ma | mb).sum()
    return (float(np.max(np.abs(la - lb))), float(np.degrees(np.arccos(min(1.0, cos)))),
            bool((ma == mb).all()), float((ma & mb).sum() / union) if union else 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benchmark_arguments(parser)  # --shards: the reference extraction (fp32)
    parser.add_argument("--other", required=True, help="shards of the same images in the other precision")
    args = parser.parse_args()
    _, parts = benchmark_parts(args)
    a, b = stored(args.shards), stored(args.other)
    print(f"{args.other} against {args.shards}: {len(set(a) & set(b) & set(parts))} images in both\n")
    print("| part | images | max abs dλ | Fiedler angle median | Fiedler angle max | identical masks | mask IoU |")
    print("|---|---|---|---|---|---|---|")
    for part in ("tune", "check"):
        rows = [compare(a[i], b[i]) for i in sorted(parts) if parts[i] == part and i in a and i in b]
        if not rows:
            continue
        dl, angle, same, iou = (np.array(c) for c in zip(*rows))
        print(f"| {part} | {len(rows)} | {dl.max():.1e} | {np.median(angle):.3f}° | {angle.max():.2f}° | "
              f"{100 * same.mean():.1f}% | {100 * iou.mean():.2f} |")


if __name__ == "__main__":
    main()
