"""Prints docs/objects-results.md's cut-choice rows: choosing label's cut.

    DATA=path/to/data
    deep-spectral extract $DATA/ecssd/images --out OUT --store-features      # once per benchmark, then:
    python -m bench.choose_cut --shards OUT --images $DATA/ecssd/images --masks $DATA/ecssd/masks --split half
    python -m bench.choose_cut --shards OUT --images $DATA/coco128/images \\
        --annotations $DATA/coco128/instances_train2017.json --split name
    python -m bench.choose_cut --shards OUT --voc-root $DATA/voc2007/VOC2007 --split parity

OUT: the default extraction with stored features (for VOC07: `deep-spectral extract --dataset
voc --root $DATA/voc2007/VOC2007 --out OUT --store-features`). The cut is chosen among the
iterative cut's objects (label's discovery), on the stored shards.

Per image, from the stored features and eigenvectors (no forward pass): the graph, label's
default discovery (iterative, up to 8 objects, mean threshold) and, with `+eig`, also the
largest components above the mean of eigenvectors 1-3 with both signs. A rule picks one
candidate patch mask (mask benchmarks refine it with the guided filter, box benchmarks score
its patch box):

    label        the object label ranks first (its `cut` score and frame rule: LabelConfig's defaults)
    head         the self-trained head's own mask (pipeline.objects.self_training; `--self-train`)
    iter-head    the iterative object with the highest IoU with the head's mask
    iter-border  the iterative object touching the grid border least (ties: the larger)
    all-head     iterative + eigenvector candidates, highest IoU with the head's mask
    all-border   the same candidates, least border contact

The head is fitted as `label --self-train` fits it (pipeline.batch.head_fitting: Fiedler
objects of a fixed-seed sample of 400 stored rows, or all when fewer).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from bench.single_object import (_candidates, _iou, _items, add_benchmark_arguments, benchmark_parts,
                                 guided_or_box_score, print_parts_table)
from jobs.runner import set_threads
from pipeline.batch.head_fitting import fit_stored_head, head_sample
from pipeline.config import ExtractConfig
from pipeline.io.ground_truth import read_mask
from pipeline.objects.discovery import discover
from pipeline.objects.instances import LabelConfig, candidate_score
from pipeline.objects.self_training import head_mask
from pipeline.spectral.affinity import image_affinity
from pipeline.spectral.spectrum import border_mask

LEVERS = ("label", "head", "iter-head", "iter-border", "all-head", "all-border")


def _least_border(masks: list[np.ndarray]) -> np.ndarray:
    border = border_mask(*masks[0].shape)
    return min(masks, key=lambda c: (round(float(c[border].mean()), 2), -c.sum()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benchmark_arguments(p)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    set_threads(a.threads)
    cfg, label_cfg = ExtractConfig(store_features=True), LabelConfig(self_train=True)
    samples, parts = benchmark_parts(a)
    t = time.perf_counter()
    head, info = fit_stored_head(a.shards, cfg.digest(), head_sample(sorted(samples), label_cfg), label_cfg)
    print(f"head fitted on {info['images']} images in {time.perf_counter() - t:.0f} s", flush=True)
    boxes = not a.masks
    scores = {lv: {"tune": [], "check": []} for lv in LEVERS}
    seconds, n_objects = [], []
    started = time.time()
    for done, item in enumerate(_items(a.shards, cfg.digest(), samples, cfg.backbone.long_side, sorted(parts))):
        if done % 50 == 0:
            print(f"{done}/{len(parts)} images, {time.time() - started:.0f} s", file=sys.stderr, flush=True)
        s = samples[item.row["image_id"]]
        t = time.perf_counter()
        W = image_affinity(item.features, item.image, cfg.graph)
        found = discover(item.eigenvectors, np.asarray(item.row["eigenvalues"]), W, label_cfg.discovery)
        seconds.append(time.perf_counter() - t)
        n_objects.append(len(found))
        iterative = [c.mask for c in found if c.mask.any()] or [np.ones(item.eigenvectors.shape[1:], bool)]
        every = iterative + _candidates(item)
        target = head_mask(head, item.features)
        cells = {"label": max(found, key=lambda c: (candidate_score(c, label_cfg), -c.rank)).mask,
                 "head": target,
                 "iter-head": max(iterative, key=lambda c: _iou(c, target)),
                 "iter-border": _least_border(iterative),
                 "all-head": max(every, key=lambda c: _iou(c, target)),
                 "all-border": _least_border(every)}
        part = parts[s.image_id]
        gt = None if boxes else read_mask(s.mask_uri)
        for lv, c in cells.items():
            value = guided_or_box_score(item, s, c, gt)
            if value is not None:
                scores[lv][part].append(value)
    metric = "CorLoc" if boxes else "mIoU"
    n = {pt: len(scores["label"][pt]) for pt in ("tune", "check")}
    print(f"{a.shards}: tune {n['tune']}, check {n['check']} images; {metric} in % "
          f"({'patch box' if boxes else 'guided filter'}); median {np.median(n_objects):.0f} iterative objects, "
          f"graph + discovery {np.median(seconds):.3f} s per image (median)")
    print_parts_table(scores, metric, column="rule")


if __name__ == "__main__":
    main()
