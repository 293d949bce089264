"""Prints docs/semantic-results.md's ground-truth head row (Ceilings): the head fitted to ground-truth labels.

The self-training head trained on GROUND-TRUTH labels of one scored part and scored on another:
what a head over the stored patch features could reach were its pseudo-labels right.

    python -m bench.semantic_probe --shards SHARDS [--config-digest D] --voc-root VOC2007 \\
        [--split Segmentation/trainval] --part tune=tune_even.txt --part check=check_odd.txt \\
        [--features segment] [--seeds 3] [--epochs 30]

Each cell takes the ground-truth class covering most of its pixels (pipeline.semantic.oracle's
cell coverage; cells mostly void are left out), the head is the pipeline's (train_head, linear
over the unit-normalised features, every cell of the training part each epoch), and its
probabilities are upsampled and scored as self-trained labels are: one Hungarian matching of
its 21 outputs to the 21 classes (the identity matching is printed too). Every ordered pair of
parts is a row: train on one, score the other. A part holds tens of images where the
pseudo-labels cover the whole clustered dataset, so this bounds what right labels on that many
images give, not what the pipeline's labels could.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from bench.semantic_clustering import add_stored_voc_arguments
from jobs.cluster import pick_digest
from jobs.evaluate_semantic import _parts as part_stems
from pipeline.config import ExtractConfig
from pipeline.evaluation.semantic_metrics import confusion, hungarian_miou
from pipeline.features.geometry import geometry_of, grid_to_pixels
from pipeline.io.semantic_masks import VOC_CLASSES, read_class_mask, voc_semantic
from pipeline.io.shards import shard_config
from pipeline.semantic.labelling import segment_rows
from pipeline.semantic.oracle import cell_weights
from pipeline.semantic.self_training import SelfTrainConfig, predict_probabilities, train_head

IGNORE = 255


def cell_classes(gt: np.ndarray, geom, n_classes: int) -> np.ndarray:
    """(H, W) classes with void IGNORE -> (grid_h, grid_w) int64: each cell's majority class,
    IGNORE where void covers most of it."""
    weights = cell_weights(gt[None] == np.arange(n_classes)[:, None, None], geom)
    labels = weights.argmax(axis=0)
    return np.where(weights.sum(axis=0) < 0.5, IGNORE, labels)


def identity_miou(cm: np.ndarray) -> float:
    """(outputs, classes) confusion -> mean IoU with output c read as class c, over the classes
    present in the ground truth (as hungarian_miou averages)."""
    inter = np.diag(cm).astype(np.float64)
    gt_total = cm.sum(axis=0)
    union = cm.sum(axis=1) + gt_total - inter
    present = gt_total > 0
    return float((inter[present] / union[present]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stored_voc_arguments(parser)
    parser.add_argument("--features", default="segment", help="the head's input: segment | tokens")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    parts = part_stems(args)
    if len(parts) < 2:
        raise SystemExit("give at least two --part NAME=FILE: the head trains on one and is scored on another")
    digest = pick_digest(args.shards, args.config_digest)
    long_side = ExtractConfig.from_dict(shard_config(args.shards, digest)).backbone.long_side
    samples = {s.image_id: s for s in voc_semantic(args.voc_root, args.split)}
    n_classes = len(VOC_CLASSES)
    images = {}  # stem -> (features (h, w, C), cell classes (h, w), gt (H, W), geometry)
    for row in segment_rows(args.shards, digest, image_ids=list(samples), patch_features=args.features):
        gt = read_class_mask(samples[row["image_id"]].mask_uri)
        geom = geometry_of(row, long_side)
        stem = os.path.splitext(os.path.basename(row["image_id"]))[0]
        images[stem] = (np.array(row["patch_features"], np.float32), cell_classes(gt, geom, n_classes), gt, geom)
    print(f"{len(images)} scored images with stored {args.features} features")
    print("| trained on | scored on | Hungarian mIoU | identity mIoU |\n|---|---|---|---|")
    for train in parts:
        chosen = [images[s] for s in parts[train] if s in images]
        x = np.concatenate([f.reshape(-1, f.shape[-1]) for f, *_ in chosen])
        y = np.concatenate([c.ravel() for _, c, *_ in chosen])
        x, y = x[y != IGNORE], y[y != IGNORE]
        # One head per seed, trained once and scored on every other part.
        heads = [train_head(lambda: iter([(x, y)]), n_classes,
                            SelfTrainConfig(epochs=args.epochs, seed=seed, features=args.features))
                 for seed in range(args.seeds)]
        for test in (p for p in parts if p != train):
            scores = []
            for head in heads:
                cm = np.zeros((n_classes, n_classes), np.int64)
                for stem in parts[test]:
                    if stem in images:
                        f, _, gt, geom = images[stem]
                        p = np.stack([grid_to_pixels(q, geom) for q in predict_probabilities(head, f)])
                        cm += confusion(p.argmax(axis=0).astype(np.uint8), gt, n_classes, n_classes, IGNORE)
                scores.append((hungarian_miou(cm).miou, identity_miou(cm)))
            (h, i), (hs, _) = np.mean(scores, axis=0), np.std(scores, axis=0)
            print(f"| {train} ({len(chosen)}) | {test} | {100 * h:.1f} ± {100 * hs:.1f} | {100 * i:.1f} |")


if __name__ == "__main__":
    main()
