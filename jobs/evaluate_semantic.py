"""`deep-spectral evaluate semantic`: unsupervised semantic segmentation scored as in the paper.

    deep-spectral evaluate semantic --images coco128/images --masks coco128/semantic_masks \\
        --label-map coco128/semantic_eval_map.json --out OUT --local
    deep-spectral evaluate semantic --voc-root VOCdevkit/VOC2012 --split val --out OUT
    deep-spectral evaluate semantic --voc-root VOCdevkit/VOC2007 --split Segmentation/trainval \
        --cluster-split trainval --oracle-segments --out OUT      # the paper's VOC protocol

Extraction with segments (the same actors and shards as `extract --segments N`), then per
seed: dataset-wide k-means of the segment features, pseudo-labels, and mIoU after one
Hungarian matching of labels to classes over the whole dataset (background included).
k-means runs vary widely, so the report is mean ± std (population) over --seeds runs; the
first seed's pseudo-labels are written as palette PNGs to OUT/labels.

--cluster-split S (VOC) extracts and clusters every image of ImageSets/Main/S.txt as well
(unlabeled: no mask is read for them) and still scores only the masked --split, as the
paper clusters a whole dataset's segments. --oracle-segments adds the ceiling: the same
features, clustering and matching with ground-truth regions as the segments
(jobs.semantic_oracle). --score-list FILE scores only the listed masked images; --part
NAME=FILE also scores a part (tune, check) on its own with its own matching, in the same run
and the same clusters, while clustering stays over everything. --region-crops NAME re-embeds
each seed's regions and clusters them again (jobs.region_crops: OUT/regions, one regions
digest per seed, so a rerun embeds nothing twice); the oracle then joins the ground-truth
regions' crops by NAME to their features the same way. --set
pseudo_labels.self_train.backbone=NAME maps every clustered image once for all seeds
(jobs.head_maps: OUT/head_maps).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np
from PIL import Image

from jobs import extract
from jobs.cluster import PSEUDO_LABEL_FLAGS, seeded
from jobs.options import Options, dry_run
from jobs.head_maps import run_for_head
from jobs.region_crops import run_region_crops
from jobs.semantic_oracle import region_features, score_oracle
from jobs.tasks import data_flags, extract_samples
from pipeline.io.ground_truth import Sample, folder_pairs, voc_split_ids
from pipeline.semantic.pseudo_labels import encode_label_png
from pipeline.semantic.head_map_rows import HeadMaps, head_maps_of
from pipeline.semantic.labelling import (PseudoLabelConfig, RegionClasses, fit_label_clusters, fit_region_classes,
                                         head_rows, missing_head_features, pseudo_labels, segment_rows, self_train,
                                         self_trained_labels, source_image, with_head_features)
from pipeline.config import ExtractConfig, RuntimeConfig
from pipeline.io.semantic_masks import VOC_CLASSES, LabelMap, read_class_mask, read_label_map, voc_semantic
from pipeline.evaluation.semantic_metrics import confusion, hungarian_miou

DEFAULT_SEGMENTS = 15  # the paper's segments per image, when extraction flags do not say


OPTIONS = Options({"extract": ExtractConfig, "pseudo_labels": PseudoLabelConfig, "runtime": RuntimeConfig},
                  extract.EXTRACT_FLAGS + extract.SEGMENT_FLAGS
                  + [f for f in PSEUDO_LABEL_FLAGS if f.option != "--seed"] + extract.RUNTIME_FLAGS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("semantic benchmark")
    group.add_argument("--label-map", default=None,
                       help="JSON {classes, ignore_index, map: raw mask value -> class}")
    group.add_argument("--ignore-index", type=int, default=255, help="class value not scored")
    group.add_argument("--seeds", type=int, default=5, help="clustering runs (seeds 0..N-1)")
    group.add_argument("--cluster-split", default=None,
                       help="VOC: also extract and cluster every image of ImageSets/Main/SPLIT.txt "
                            "(unlabeled), scoring only the masked --split")
    group.add_argument("--oracle-segments", action="store_true",
                       help="also score ground-truth regions as the segments (same features, "
                            "clustering and matching): the backbone's ceiling")
    group.add_argument("--score-list", default=None,
                       help="text file of image stems: score only these masked images")
    group.add_argument("--part", action="append", default=[], metavar="NAME=FILE",
                       help="also score the listed masked images (stems) on their own, with their "
                            "own matching: a tune or check part of one run (repeatable)")
    group.add_argument("--reuse-shards", default=None, metavar="OUT2",
                       help="an output holding this extraction without segments but with stored "
                            "features: add segments to its rows instead of a forward pass")
    OPTIONS.add_to(parser)


def configs_from_args(args: argparse.Namespace, n_classes: int) -> dict:
    """The benchmark's configs: segments on (DEFAULT_SEGMENTS) and one cluster per foreground
    class unless the settings say otherwise; the head's features made definite for these
    shards. A bad or missing setting exits (status 2, one line) before any extraction."""
    configs = extract.checked(OPTIONS.configs(args, defaults={"extract.segments.n_segments": DEFAULT_SEGMENTS,
                                                              "pseudo_labels.cluster.n_clusters": n_classes - 1}))
    cfg, labels = configs["extract"], configs["pseudo_labels"]
    if labels.self_train is not None:
        labels = dataclasses.replace(labels, self_train=with_head_features(labels.self_train, cfg))
        if why := missing_head_features(cfg, labels.self_train.features):
            raise SystemExit(f"error: {why}")
    return {**configs, "pseudo_labels": labels}


def _samples(args: argparse.Namespace) -> tuple[list[Sample], tuple[str, ...], LabelMap | None]:
    label_map = read_label_map(args.label_map) if args.label_map else None
    if args.voc_root:
        samples, classes = voc_semantic(args.voc_root, args.split), VOC_CLASSES
    elif args.images and args.masks:
        samples = folder_pairs(args.images, args.masks)
        classes = label_map.classes if label_map else None
    else:
        raise SystemExit("semantic needs --voc-root DIR [--split S] or --images DIR --masks DIR")
    if label_map:
        classes = label_map.classes
    if classes is None:
        raise SystemExit("--images/--masks need --label-map FILE to name the classes")
    samples = samples[:args.limit] if args.limit else samples
    if args.score_list:
        wanted = _stems(args.score_list)
        samples = [s for s in samples if _stem(s.image_id) in wanted]
        if not samples:
            raise SystemExit(f"--score-list {args.score_list} names none of the masked images")
    return samples, tuple(classes), label_map


def _stems(path: str) -> set[str]:
    with open(path) as f:
        return {line.split()[0] for line in f if line.strip()}


def _stem(image_id: str) -> str:
    return os.path.splitext(os.path.basename(image_id))[0]


def _parts(args: argparse.Namespace) -> dict[str, set[str]]:
    """--part NAME=FILE flags -> {NAME: image stems}."""
    parts = {}
    for flag in args.part:
        name, sep, path = flag.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--part needs NAME=FILE, got {flag!r}")
        parts[name] = _stems(path)
    return parts


def _cluster_only(args: argparse.Namespace, scored: list[Sample]) -> list[Sample]:
    """The --cluster-split images that are not scored (no mask read), in split order."""
    if not args.cluster_split:
        return []
    if not args.voc_root:
        raise SystemExit("--cluster-split needs --voc-root (an ImageSets/Main list)")
    root, have = args.voc_root.rstrip("/"), {s.image_id for s in scored}
    extra = [Sample(f"JPEGImages/{i}.jpg", f"{root}/JPEGImages/{i}.jpg") for i in voc_split_ids(root, args.cluster_split)]
    return [s for s in extra if s.image_id not in have]


def _score_seed(shards: str, digest: str, samples: dict[str, Sample], classes: tuple[str, ...],
                label_map: LabelMap | None, labels_cfg: PseudoLabelConfig, long_side: int | None,
                ignore_index: int, png_dir: str | None, self_training: bool,
                cluster_ids: list[str], parts: dict[str, set[str]],
                region_classes=None, maps: HeadMaps | None = None) -> tuple[dict, list[str]]:
    """Fit over `cluster_ids` (the scored images and any unlabeled ones), score `samples`
    (and each part of them on its own). `region_classes(model, labels_cfg)` -> the regions'
    RegionClasses (labels_cfg.region_crops: embedded and clustered again); `maps`: the second
    network's, for a head whose config names one."""
    model, n_segments, n_regions = fit_label_clusters(shards, digest, labels_cfg, image_ids=cluster_ids)
    regions: RegionClasses | None = region_classes(model, labels_cfg) if labels_cfg.region_crops else None
    head = (self_train(shards, digest, model, labels_cfg.self_train, cluster_ids, labels_cfg.min_cluster_share,
                       regions, labels_cfg.fiedler_threshold, maps) if self_training else None)
    n_labels = labels_cfg.cluster.n_clusters + 1
    counts = np.zeros((n_labels, len(classes)), np.int64)
    counts_self = counts.copy()
    counts_parts = {name: counts.copy() for name in parts}
    counts_self_parts = {name: counts.copy() for name in parts}
    scored = []
    rows = (head_rows(shards, digest, labels_cfg.self_train, maps, list(samples)) if self_training
            else segment_rows(shards, digest, image_ids=list(samples)))
    for row in rows:
        try:  # one unreadable or mismatched mask must not cost the benchmark
            image = source_image(row) if labels_cfg.refine != "none" else None
            segment_labels, labels = pseudo_labels(row, model, labels_cfg, long_side, image, regions)
            gt = read_class_mask(samples[row["image_id"]].mask_uri, label_map)
            image_counts = confusion(_at(labels, gt.shape), gt, n_labels, len(classes), ignore_index)
            self_counts = 0
            if head is not None:
                predicted = _at(self_trained_labels(row, head, segment_labels, labels_cfg, long_side, image), gt.shape)
                self_counts = confusion(predicted, gt, n_labels, len(classes), ignore_index)
        except Exception as exc:
            print(f"  failed {row['image_id']}: {type(exc).__name__}: {exc}")
            continue
        counts += image_counts
        counts_self += self_counts
        for name, stems in parts.items():
            if _stem(row["image_id"]) in stems:
                counts_parts[name] += image_counts
                counts_self_parts[name] += self_counts
        scored.append(row["image_id"])
        if png_dir:
            path = f"{png_dir}/{os.path.splitext(row['image_id'])[0]}.png"
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(encode_label_png(labels))
    score = hungarian_miou(counts)
    result = {"seed": labels_cfg.cluster.seed, "miou": score.miou, "pixel_accuracy": score.pixel_accuracy,
              "iou": score.iou.tolist(), "match": score.match.tolist(),
              "n_segments": n_segments, "n_regions": n_regions,
              "lloyd_passes": model.n_passes}
    if regions is not None:
        result["n_region_crops"] = regions.model.n_fitted
    result["parts"] = {name: _part_score(c) for name, c in counts_parts.items()}
    if head is not None:
        self_score = hungarian_miou(counts_self)
        result.update(self_trained_miou=self_score.miou, self_trained_pixel_accuracy=self_score.pixel_accuracy,
                      self_trained_iou=self_score.iou.tolist(),
                      self_trained_parts={name: _part_score(c) for name, c in counts_self_parts.items()})
    return result, scored


def _part_score(counts: np.ndarray) -> dict:
    score = hungarian_miou(counts)
    return {"miou": score.miou, "pixel_accuracy": score.pixel_accuracy, "iou": score.iou.tolist()}


def _summarise_parts(runs: list[dict], key: str = "parts") -> dict:
    """Per-seed part scores -> {part: {miou, miou_std, pixel_accuracy}} over the seeds."""
    names = runs[0][key] if runs else {}
    return {name: {"miou": float(np.mean([r[key][name]["miou"] for r in runs])),
                   "miou_std": float(np.std([r[key][name]["miou"] for r in runs])),
                   "pixel_accuracy": float(np.mean([r[key][name]["pixel_accuracy"] for r in runs]))}
            for name in names}


def _at(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Labels at the ground truth's size (a mask may be saved at another size)."""
    if labels.shape == shape:
        return labels
    return np.asarray(Image.fromarray(labels).resize(shape[::-1], Image.NEAREST))


def run(args: argparse.Namespace) -> dict:
    samples, classes, label_map = _samples(args)
    if not samples:
        raise SystemExit("no images found for these dataset flags")
    configs = configs_from_args(args, len(classes))
    cfg, labels, runtime = configs["extract"], configs["pseudo_labels"], configs["runtime"]
    if args.dry_run:
        dry_run(configs, {"extract": cfg.digest(), "pseudo_labels": labels.digest(cfg.digest())})
        raise SystemExit(0)
    self_training = labels.self_train is not None
    unlabeled = _cluster_only(args, samples)
    out, shards, summary, extract_seconds = extract_samples(args, cfg, runtime, samples + unlabeled)

    started = time.time()
    by_id = {s.image_id: s for s in samples}
    parts = _parts(args)
    cluster_ids = list(by_id) + [s.image_id for s in unlabeled]

    def region_classes(model, labels_cfg: PseudoLabelConfig) -> RegionClasses:
        run_region_crops(shards, cfg.digest(), out, model, labels_cfg, cfg.backbone.long_side, runtime, args.local,
                         image_ids=cluster_ids)
        return fit_region_classes(out, labels_cfg.regions_digest(cfg.digest()), labels_cfg.cluster,
                                  image_ids=cluster_ids)

    head_cfg = labels.self_train
    maps_run = run_for_head(shards, cfg.digest(), out, head_cfg, cfg.backbone.long_side, runtime, args.local,
                            image_ids=cluster_ids)
    maps = head_maps_of(out, head_cfg, cfg.digest())
    per_seed, scored = [], []
    for seed in range(args.seeds):
        labels_cfg = seeded(labels, seed)
        result, scored = _score_seed(shards, cfg.digest(), by_id, classes, label_map, labels_cfg,
                                     cfg.backbone.long_side, args.ignore_index,
                                     f"{out}/labels" if seed == 0 else None, self_training, cluster_ids, parts,
                                     region_classes, maps)
        print(f"  seed {seed}: mIoU {result['miou']:.4f}, pixel accuracy {result['pixel_accuracy']:.4f}"
              + (f", self-trained mIoU {result['self_trained_miou']:.4f}" if self_training else ""))
        per_seed.append(result)
    evaluate_seconds = time.time() - started
    oracle = _oracle(args, shards, cfg, by_id, classes, label_map, labels, parts) if args.oracle_segments else {}

    mious = np.array([r["miou"] for r in per_seed])
    ious = np.array([r["iou"] for r in per_seed], dtype=float)
    failed = sorted(set(by_id) - set(scored))
    report = {
        "task": "semantic",
        "miou": float(mious.mean()),
        "miou_std": float(mious.std()),
        "pixel_accuracy": float(np.mean([r["pixel_accuracy"] for r in per_seed])),
        **({"self_trained_miou": float(np.mean([r["self_trained_miou"] for r in per_seed])),
            "self_trained_miou_std": float(np.std([r["self_trained_miou"] for r in per_seed])),
            "self_trained_pixel_accuracy": float(np.mean([r["self_trained_pixel_accuracy"] for r in per_seed])),
            "self_trained_parts": _summarise_parts(per_seed, "self_trained_parts")}
           if self_training else {}),
        "per_class_iou": {c: (None if np.isnan(v) else round(float(v), 4))
                          for c, v in zip(classes, ious.mean(axis=0))},
        "parts": {name: {**score, "n_images": sum(_stem(i) in parts[name] for i in scored)}
                  for name, score in _summarise_parts(per_seed).items()},
        "per_seed": per_seed,
        **oracle,
        "n_images": len(scored),
        "n_clustered_images": len(cluster_ids),
        "n_failed": len(failed),
        "seconds_per_image": round((extract_seconds + evaluate_seconds) / max(len(scored), 1), 4),
        "n_extracted": summary["processed"] + summary["failed"],
        "extract_seconds": round(extract_seconds, 2),
        # None when every image was already in the shards (a rerun: nothing was extracted).
        "extract_seconds_per_image": (round(extract_seconds / (summary["processed"] + summary["failed"]), 4)
                                      if summary["processed"] + summary["failed"] else None),
        "evaluate_seconds": round(evaluate_seconds, 2),
        **({"head_maps_run": maps_run} if maps_run else {}),
        "backbone": cfg.backbone.name,
        "config_digest": cfg.digest(),
        "config": {"extract": cfg.to_dict(), "task": {
                       "labels": dataclasses.replace(seeded(labels, 0), self_train=None).to_dict(),
                       "seeds": args.seeds, "classes": list(classes),
                       "self_train": dataclasses.asdict(seeded(labels, 0).self_train) if self_training else None,
                       "label_map": args.label_map, "ignore_index": args.ignore_index,
                       "cluster_split": args.cluster_split, "oracle_segments": args.oracle_segments,
                       "score_list": args.score_list, "parts": args.part, "reuse_shards": args.reuse_shards},
                   "data": data_flags(args),
                   "limit": args.limit, "local": args.local, "shards": shards},
        "failed": failed,
    }
    for path in filter(None, [args.json, f"{out}/metrics.json"]):
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
    print(f"semantic  mIoU {report['miou']:.4f} ± {report['miou_std']:.4f} over {args.seeds} seeds  "
          f"pixel accuracy {report['pixel_accuracy']:.4f}  n_images {len(scored)}  "
          f"n_failed {len(failed)}  backbone {cfg.backbone.name}")
    for name, part in report["parts"].items():
        ceiling = oracle.get("oracle_parts", {}).get(name)
        trained = report.get("self_trained_parts", {}).get(name)
        print(f"  part {name} ({part['n_images']} images): mIoU {part['miou']:.4f} ± {part['miou_std']:.4f}"
              + (f", self-trained {trained['miou']:.4f} ± {trained['miou_std']:.4f}" if trained else "")
              + (f", oracle {ceiling['miou']:.4f} ± {ceiling['miou_std']:.4f}" if ceiling else ""))
    if self_training:
        print(f"self-trained  mIoU {report['self_trained_miou']:.4f} ± {report['self_trained_miou_std']:.4f}  "
              f"pixel accuracy {report['self_trained_pixel_accuracy']:.4f}")
    if oracle:
        print(f"oracle segments  mIoU {oracle['oracle_miou']:.4f} ± {oracle['oracle_miou_std']:.4f}  "
              f"pixel accuracy {oracle['oracle_pixel_accuracy']:.4f}  regions {oracle['oracle_n_regions']}")
    return report


def _oracle(args: argparse.Namespace, shards: str, cfg, by_id: dict[str, Sample], classes: tuple[str, ...],
            label_map: LabelMap | None, labels: PseudoLabelConfig, parts: dict[str, set[str]]) -> dict:
    """The report's oracle_* keys: every seed with ground-truth regions as the segments."""
    started = time.time()
    features, failed = region_features(shards, cfg, by_id, label_map, args.ignore_index, labels.region_crops)
    runs = [score_oracle(features, by_id, label_map, len(classes),
                         seeded(labels, seed).cluster, args.ignore_index,
                         {name: {i for i in by_id if _stem(i) in stems} for name, stems in parts.items()})
            for seed in range(args.seeds)]
    for r in runs:
        print(f"  oracle seed {r['seed']}: mIoU {r['miou']:.4f}")
    mious, ious = np.array([r["miou"] for r in runs]), np.array([r["iou"] for r in runs], dtype=float)
    return {"oracle_miou": float(mious.mean()), "oracle_miou_std": float(mious.std()),
            "oracle_pixel_accuracy": float(np.mean([r["pixel_accuracy"] for r in runs])),
            "oracle_per_class_iou": {c: (None if np.isnan(v) else round(float(v), 4))
                                     for c, v in zip(classes, ious.mean(axis=0))},
            "oracle_parts": _summarise_parts(runs), "oracle_per_seed": runs, "oracle_n_regions": runs[0]["n_regions"] if runs else 0,
            "oracle_failed": failed, "oracle_seconds": round(time.time() - started, 2)}
