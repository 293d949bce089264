"""Test-time averaging with the horizontal mirror, on stored shards, tune and check parts.

    D=../shared/data
    python -m bench.flip_average --shards /work/out12/ecssd --images $D/ecssd/images --masks $D/ecssd/masks --split half
    python -m bench.flip_average --shards /work/out12/coco128 --images $D/coco128/images \\
        --annotations $D/coco128/instances_train2017.json --split name
    python -m bench.flip_average --shards /work/out/voc07 --voc-root $D/voc2007/VOC2007 --split parity

Per image the backbone runs once more, on the mirrored network input (the resized, cropped
image flipped left-right, so the mirrored patch grid is the same cells), and its features are
flipped back onto the stored grid. Levers (patch masks: the Fiedler object as `label` makes it,
above the mean, largest component; mask benchmarks refine it with the guided filter):

    fiedler     the stored eigenvectors (no averaging; today's default)
    flip-feat   features averaged with the mirror's, then graph, eigenvectors, Fiedler mask
                (BackboneConfig(flip_average=True), `--flip-average`)
    flip-eig    the mirror's own oriented Fiedler vector averaged with the stored one (each
                scaled to unit norm, sign-aligned), then the mask
    flip-and    the two Fiedler masks' intersection (a cell both cuts keep)

Seconds: the mirror's forward pass and eigensolve per image, apart from the masks.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from bench.single_object import _items, add_benchmark_arguments, benchmark_parts, guided_or_box_score, print_parts_table
from jobs.extract import set_threads
from pipeline.config import ExtractConfig
from pipeline.features.backbones import create_backbone, preprocess
from pipeline.io.ground_truth import read_mask
from pipeline.objects.localize import foreground_mask, largest_component
from pipeline.objects.masks import SegmentConfig, patch_mask
from pipeline.spectral.affinity import image_affinity
from pipeline.spectral.spectrum import graph_spectrum

LEVERS = ("fiedler", "flip-feat", "flip-eig", "flip-and")


def _mask_of(vec: np.ndarray) -> np.ndarray:
    mask, _ = foreground_mask(vec, "mean")
    return largest_component(mask, vec)


def main() -> None:
    p = argparse.ArgumentParser()
    add_benchmark_arguments(p)
    p.add_argument("--threads", type=int, default=1, help="torch / BLAS threads (1: the cores are shared)")
    a = p.parse_args()
    set_threads(a.threads)
    cfg = ExtractConfig(store_features=True)
    backbone = create_backbone(cfg.backbone.name, resize=cfg.backbone.long_side, max_batch_size=1)
    samples, parts = benchmark_parts(a)
    boxes = not a.masks
    scores = {lv: {"tune": [], "check": []} for lv in LEVERS}
    seconds = {"mirror forward": [], "flip-feat graph+eig": [], "flip-eig graph+eig": []}
    started = time.time()
    for done, item in enumerate(_items(a.shards, cfg.digest(), samples, cfg.backbone.long_side, sorted(parts))):
        if done % 50 == 0:
            print(f"{done}/{len(parts)} images, {time.time() - started:.0f} s", file=sys.stderr, flush=True)
        s = samples[item.row["image_id"]]
        crop, _ = preprocess(item.image, backbone.patch_size, cfg.backbone.long_side)
        t = time.perf_counter()
        mirrored = backbone([np.ascontiguousarray(crop[:, ::-1])])[0].features[:, ::-1]
        seconds["mirror forward"].append(time.perf_counter() - t)
        if mirrored.shape != item.features.shape:
            raise SystemExit(f"{s.image_id}: mirrored grid {mirrored.shape} != stored {item.features.shape}")
        grid = item.features.shape[:2]
        t = time.perf_counter()
        avg = graph_spectrum(image_affinity((item.features + mirrored) / 2, item.image, cfg.graph), grid, cfg.eigen)
        seconds["flip-feat graph+eig"].append(time.perf_counter() - t)
        t = time.perf_counter()
        mine = graph_spectrum(image_affinity(np.ascontiguousarray(mirrored), item.image, cfg.graph), grid, cfg.eigen)
        seconds["flip-eig graph+eig"].append(time.perf_counter() - t)
        f0, f1 = item.eigenvectors[1], mine.eigenvectors[1]
        f1 = f1 if float((f0 * f1).sum()) >= 0 else -f1
        base = patch_mask(item.eigenvectors, SegmentConfig())[0]
        cells = {"fiedler": base, "flip-feat": patch_mask(avg.eigenvectors, SegmentConfig())[0],
                 "flip-eig": _mask_of(f0 / np.linalg.norm(f0) + f1 / np.linalg.norm(f1)),
                 "flip-and": base & patch_mask(mine.eigenvectors, SegmentConfig())[0]}
        part = parts[s.image_id]
        gt = None if boxes else read_mask(s.mask_uri)
        for lv, c in cells.items():
            value = guided_or_box_score(item, s, c if c.any() else base, gt)
            if value is not None:
                scores[lv][part].append(value)
    metric = "CorLoc" if boxes else "mIoU"
    n = {pt: len(scores["fiedler"][pt]) for pt in ("tune", "check")}
    print(f"{a.shards}: tune {n['tune']}, check {n['check']} images; {metric} in % "
          f"({'patch box' if boxes else 'guided filter'})")
    print_parts_table(scores, metric)
    print("seconds per image (median): " + ", ".join(f"{k} {np.median(v):.3f}" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
