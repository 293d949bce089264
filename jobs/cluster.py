"""The final task: dataset-wide clustering of segment features -> pseudo-labels.

    python -m jobs.cluster SHARDS --out OUT --clusters 20               # local Ray
    ray job submit --working-dir . -- python -m jobs.cluster s3://b/run --out s3://b/labels --clusters 20

SHARDS is an extraction output written with `--segments N`. One Ray task streams every
segment feature from the shards (bounded memory, pipeline.semantic.clustering), fits C clusters with a
seed, and writes:

    OUT/labels/<image stem>.png          palette PNG per image, 0 = background, c + 1 = cluster c
                                         (with --self-train: the labels a head on the stored
                                         patch features predicts after training on these)
    OUT/segment_labels/part-*.parquet    one row per segment (pipeline.io.schema.SEGMENT_LABEL_SCHEMA)
    OUT/clusters.npz                     centroids (+ PCA), to label new images the same way
    OUT/cluster.json                     configuration, digests, counts, seconds, failed images

With --region-crops NAME the first clustering's regions (each image's segments grouped by
label) are cropped and embedded by NAME in Ray actors between two tasks (jobs.region_crops:
OUT/regions, OUT/region_errors), and the final task clusters them again: the labels are the
regions' classes (OUT/region_clusters.npz). With --self-train-backbone NAME, NAME's feature map of
every image is made first, by Ray actors too (jobs.head_maps: OUT/head_maps, OUT/head_map_errors),
and the head reads it next to the stored patch features.

Same seed + same shards = the same labels. A rerun with the same settings overwrites the
same files (and embeds no region twice).
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
import time

import fsspec
import numpy as np

from jobs.head_maps import run_for_head
from jobs.region_crops import run_region_crops
from pipeline.semantic.clustering import ClusterConfig, SegmentClusters
from pipeline.semantic.region_crops import REGION_FEATURES, RegionCropConfig
from pipeline.semantic.pseudo_labels import REFINE_MODES, encode_label_png
from pipeline.io.schema import segment_label_table
from pipeline.semantic.head_map_rows import head_maps_of
from pipeline.semantic.self_training import HEAD_FEATURES, SelfTrainConfig
from pipeline.config import ExtractConfig, RuntimeConfig
from pipeline.semantic.labelling import (LabelClusters, PseudoLabelConfig, fit_label_clusters, fit_region_classes,
                                         head_rows, missing_head_features, pseudo_labels, segment_digests, segment_rows,
                                         self_train, self_trained_labels, source_image, with_head_features)
from pipeline.io.shards import shard_config, write_shard

LABEL_DIR = "segment_labels"
FLUSH_ROWS = 4096  # segment rows per labels shard


def pick_digest(shards: str, digest: str | None) -> str:
    """The extraction config to cluster: the one given, or the only one with segments."""
    found = segment_digests(shards)
    if digest:
        if digest not in found:
            raise SystemExit(f"{shards} has no segments for config {digest} (found: {sorted(found) or 'none'})")
        return digest
    if len(found) != 1:
        raise SystemExit(f"{shards} holds segments of {len(found)} configs {sorted(found)}; "
                         "choose one with --config-digest" if found else
                         f"{shards} holds no segments: extract with --segments N first")
    return next(iter(found))


def _save(out: str, name: str, data: bytes) -> None:
    with fsspec.open(f"{out}/{name}", "wb", auto_mkdir=True) as f:
        f.write(data)


def _save_model(out: str, model: SegmentClusters, name: str = "clusters.npz") -> None:
    buf = io.BytesIO()
    arrays = {"centroids": model.centroids}
    if model.pca_components is not None:
        arrays.update(pca_mean=model.pca_mean, pca_components=model.pca_components)
    np.savez(buf, **arrays)
    _save(out, name, buf.getvalue())


def checked_config(shards: str, extract_digest: str, cfg: PseudoLabelConfig) -> tuple[PseudoLabelConfig, ExtractConfig]:
    """(cfg with its head's features made definite for these shards, the shards' extraction
    config); ValueError when the shards cannot feed the head."""
    extract = ExtractConfig.from_dict(shard_config(shards, extract_digest))
    if cfg.self_train:
        cfg = dataclasses.replace(cfg, self_train=with_head_features(cfg.self_train, extract))
        if why := missing_head_features(extract, cfg.self_train.features):
            raise ValueError(why)
    return cfg, extract


def cluster_and_label(shards: str, out: str, extract_digest: str, cfg: PseudoLabelConfig,
                      fitted: LabelClusters | None = None, region_run: dict | None = None,
                      maps_run: dict | None = None) -> dict:
    """Fit the clusters (unless `fitted` gives them; with cfg.region_crops, also the regions'
    clusters over OUT/regions) and write every output; returns the run record (also
    OUT/cluster.json). `region_run`, `maps_run`: the region and head-map stages' summaries, recorded."""
    started = time.time()
    cfg, extract = checked_config(shards, extract_digest, cfg)
    long_side = extract.backbone.long_side
    model, n_segments, n_regions = fitted or fit_label_clusters(shards, extract_digest, cfg)
    regions = (fit_region_classes(out, cfg.regions_digest(extract_digest), cfg.cluster)
               if cfg.region_crops else None)
    maps = head_maps_of(out, cfg.self_train, extract_digest)
    head = (self_train(shards, extract_digest, model, cfg.self_train, min_share=cfg.min_cluster_share,
                       regions=regions, fiedler_threshold=cfg.fiedler_threshold, maps=maps) if cfg.self_train else None)
    fit_seconds = time.time() - started
    digest = cfg.digest(extract_digest)
    pending, images, sizes = [], 0, np.zeros(cfg.cluster.n_clusters + 1, np.int64)
    failed = []
    rows = head_rows(shards, extract_digest, cfg.self_train, maps) if head else segment_rows(shards, extract_digest)
    for row in rows:
        try:  # e.g. a source image gone since extraction (guided refinement reads it)
            image = source_image(row) if cfg.refine != "none" else None
            labels, image_labels = pseudo_labels(row, model, cfg, long_side, image, regions)
            if head is not None:
                image_labels = self_trained_labels(row, head, labels, cfg, long_side, image)
        except Exception as exc:
            failed.append({"image_id": row["image_id"], "reason": f"{type(exc).__name__}: {exc}"[:500]})
            continue
        _save(out, f"labels/{os.path.splitext(row['image_id'])[0]}.png", encode_label_png(image_labels))
        sizes += np.bincount(labels, minlength=len(sizes))
        pending += [{"image_id": row["image_id"], "segment": s + 1, "label": int(c),
                     "config_digest": digest, "extract_digest": extract_digest} for s, c in enumerate(labels)]
        images += 1
        if len(pending) >= FLUSH_ROWS:
            write_shard(segment_label_table(pending), out, LABEL_DIR, json.dumps(cfg.to_dict()))
            pending = []
    if pending:
        write_shard(segment_label_table(pending), out, LABEL_DIR, json.dumps(cfg.to_dict()))
    _save_model(out, model)
    if regions is not None:
        _save_model(out, regions.model, "region_clusters.npz")
    record = {"config_digest": digest, "extract_digest": extract_digest, "shards": shards,
              "config": cfg.to_dict(), "n_images": images, "n_segments": n_segments,
              "n_regions": n_regions,
              **({"n_region_crops": regions.model.n_fitted, "region_crops_run": region_run} if regions else {}),
              **({"head_maps_run": maps_run} if maps else {}),
              "n_failed": len(failed), "failed": failed[:100],
              "segments_per_label": sizes[1:].tolist(), "lloyd_passes": model.n_passes,
              "fit_seconds": round(fit_seconds, 2), "seconds": round(time.time() - started, 2)}
    _save(out, "cluster.json", json.dumps(record, indent=2).encode())
    return record


def run_cluster(shards: str, out: str, cfg: PseudoLabelConfig, extract_digest: str | None = None,
                local: bool = False, address: str | None = None, runtime: RuntimeConfig | None = None) -> dict:
    """One task (fit and label); with cfg.region_crops, a fit task, the region actors
    (`runtime`: their batch size, device and count) and the labelling task; with a head that
    reads a second network's maps (cfg.self_train.backbone), their actors first."""
    digest = pick_digest(shards, extract_digest)
    if not local:
        import ray

        if not ray.is_initialized():
            ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local")
    runtime = dataclasses.replace(runtime or RuntimeConfig(), address=address)
    long_side = checked_config(shards, digest, cfg)[1].backbone.long_side  # shards that cannot feed the head fail here
    maps_run = run_for_head(shards, digest, out, cfg.self_train, long_side, runtime, local)
    if not cfg.region_crops:
        return _call(local, cluster_and_label, shards, out, digest, cfg, None, None, maps_run)
    fitted = _call(local, fit_label_clusters, shards, digest, cfg)
    region_run = run_region_crops(shards, digest, out, fitted.model, cfg, long_side, runtime, local)
    return _call(local, cluster_and_label, shards, out, digest, cfg, fitted, region_run, maps_run)


def _call(local: bool, fn, *args):
    """fn(*args) here, or as one Ray task retried if its worker dies (its outputs are
    overwritten whole, never appended)."""
    if local:
        return fn(*args)
    import ray

    return ray.get(ray.remote(fn).options(num_cpus=1, max_retries=3).remote(*args))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ClusterConfig()
    parser.add_argument("shards", help="extraction output (written with --segments N)")
    parser.add_argument("--out", required=True, help="output folder or fsspec URL")
    parser.add_argument("--clusters", type=int, default=d.n_clusters, help="foreground clusters")
    parser.add_argument("--seed", type=int, default=d.seed)
    add_pca_arguments(parser)
    parser.add_argument("--sample-size", type=int, default=d.sample_size,
                        help="segments held in memory for the k-means fit; more are streamed")
    parser.add_argument("--refine", choices=REFINE_MODES, default="none",
                        help="pixel labels (and self-trained ones): cell classes, or snapped to image edges by the "
                             "guided filter or the bilateral solver")
    add_consolidation_arguments(parser)
    add_region_crop_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=RuntimeConfig.batch_size,
                        help="--region-crops, --self-train-backbone: images per actor batch")
    parser.add_argument("--num-actors", type=int, default=None, help="--region-crops, --self-train-backbone: actors "
                                                                     "(default: one per GPU, else the CPUs less one)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="--region-crops, --self-train-backbone: where the actors run their network")
    parser.add_argument("--self-train", action="store_true",
                        help="label pixels with a head trained on the pseudo-labels (shards extracted "
                             "with --store-features or --store-segment-patches)")
    add_self_train_arguments(parser)
    parser.add_argument("--config-digest", default=None, help="which extraction config to cluster")
    parser.add_argument("--local", action="store_true", help="run in this process instead of a Ray task")
    parser.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else local)")


def add_consolidation_arguments(parser) -> None:
    parser.add_argument("--min-cluster-share", type=float, default=PseudoLabelConfig.min_cluster_share, metavar="S",
                        help="per image, a cluster covering less than share S of the foreground gives its "
                             "segments to the nearest cluster covering more (0 = off, the paper's labels)")
    parser.add_argument("--region-rounds", type=int, default=PseudoLabelConfig.region_rounds, metavar="N",
                        help="refit the clusters N times over every image's regions (its segments "
                             "grouped by label) instead of its segments (0 = off)")
    parser.add_argument("--fiedler-threshold", type=float, default=PseudoLabelConfig.fiedler_threshold, metavar="A",
                        help="label background every cell whose Fiedler value is at most the image's mean + "
                             "A standard deviations, whatever its segment (default: the segments' background alone)")


def labels_config_from_args(args: argparse.Namespace, cluster: ClusterConfig, refine: str,
                            self_train: SelfTrainConfig | None = None) -> PseudoLabelConfig:
    """The labelling flags (add_consolidation_arguments, add_region_crop_arguments) -> the config;
    ValueError for values it rejects."""
    return PseudoLabelConfig(cluster, refine=refine, min_cluster_share=args.min_cluster_share,
                             region_rounds=args.region_rounds, region_crops=region_crops_from_args(args),
                             fiedler_threshold=args.fiedler_threshold, self_train=self_train)


def add_region_crop_arguments(parser) -> None:
    parser.add_argument("--region-crops", default=None, metavar="NAME",
                        help="crop each image's regions (its segments grouped by label), embed them with this "
                             "registry entry (the graph's backbone, or e.g. efficientnet_lite0_supervised: "
                             "ImageNet-supervised, label its figures so) and cluster the regions again")
    parser.add_argument("--region-features", choices=REGION_FEATURES, default=RegionCropConfig.features,
                        help="--region-crops: the crop's embedding alone, or joined with the region's pooled "
                             "segment features")
    parser.add_argument("--region-crop-size", type=int, default=RegionCropConfig.crop_size, metavar="PX",
                        help="--region-crops: crops are resized to PX x PX")


def region_crops_from_args(args: argparse.Namespace) -> RegionCropConfig | None:
    if not args.region_crops:
        return None
    try:
        return RegionCropConfig(args.region_crops, args.region_features, args.region_crop_size)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc


def add_pca_arguments(parser) -> None:
    d = ClusterConfig()
    parser.add_argument("--pca", type=int, default=d.pca_dim, help="PCA dimensions before k-means (0 = none)")
    parser.add_argument("--whiten", action=argparse.BooleanOptionalAction, default=d.whiten,
                        help="scale the PCA directions to unit variance (needs --pca D)")


def cluster_config_from_args(args: argparse.Namespace, n_clusters: int, seed: int,
                             sample_size: int = ClusterConfig.sample_size) -> ClusterConfig:
    # --pca 0 means no PCA, so nothing to whiten: recorded as whiten False, not an error.
    return ClusterConfig(n_clusters=n_clusters, seed=seed, pca_dim=args.pca, whiten=args.whiten and args.pca > 0,
                         sample_size=sample_size)


def add_self_train_arguments(parser) -> None:
    d = SelfTrainConfig()
    parser.add_argument("--self-train-epochs", type=int, default=d.epochs, help="--self-train: epochs")
    parser.add_argument("--self-train-patches", type=int, default=d.sample_patches,
                        help="--self-train: train on a seeded uniform sample of at most N patches, drawn "
                             "in one pass (default: stream every patch each epoch)")
    parser.add_argument("--self-train-hidden", type=int, default=d.hidden,
                        help="--self-train: hidden units of an MLP head (0 = linear)")
    parser.add_argument("--self-train-balance", action="store_true",
                        help="--self-train: inverse-frequency class weights (needs --self-train-patches)")
    parser.add_argument("--self-train-whiten", type=int, default=d.whiten, metavar="D",
                        help="--self-train: a fixed PCA whitening of the patch sample to D dimensions in "
                             "front of the head (needs --self-train-patches; 0 = none)")
    parser.add_argument("--self-train-features", choices=HEAD_FEATURES, default=None,
                        help="--self-train: the head's patch features: the graph's tokens "
                             "(extracted with --store-features) or the kinds the segments pool, per patch "
                             "(--store-segment-patches), e.g. pool+block9; default: segment where the "
                             "shards hold them, else tokens")
    parser.add_argument("--self-train-context", type=int, default=d.context, metavar="R",
                        help="--self-train: join each patch's feature with its (2R+1)^2 neighbourhood "
                             "mean (0 = the patch alone)")
    parser.add_argument("--self-train-max-ratio", type=float, default=d.max_ratio, metavar="Q",
                        help="--self-train: train only on foreground segments whose nearest-centroid "
                             "distance is at most Q times the second nearest (1 = all)")
    parser.add_argument("--self-train-label-weight", type=float, default=d.label_weight, metavar="W",
                        help="--self-train: the final labels are the argmax of (1 - W) x the head's "
                             "probabilities + W x the pseudo-labels' one-hot (0 = the head alone)")
    parser.add_argument("--self-train-backbone", default=None, metavar="NAME",
                        help="--self-train: the head also reads NAME's dense feature map of each image (a second "
                             "network, as the paper's self-training trains one), e.g. efficientnet_lite0_supervised "
                             "(ImageNet-supervised: label its figures so); made once per extraction in OUT/head_maps")


def self_train_from_args(args: argparse.Namespace, seed: int) -> SelfTrainConfig:
    """The head's config; without --self-train-features, features None: made definite from the
    shards' config (labelling.with_head_features)."""
    try:
        return SelfTrainConfig(epochs=args.self_train_epochs, sample_patches=args.self_train_patches,
                               hidden=args.self_train_hidden, balance=args.self_train_balance,
                               whiten=args.self_train_whiten, features=args.self_train_features,
                               context=args.self_train_context, max_ratio=args.self_train_max_ratio,
                               label_weight=args.self_train_label_weight, backbone=args.self_train_backbone,
                               seed=seed)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc


def main(args: argparse.Namespace) -> int:
    try:
        cfg = labels_config_from_args(args, cluster_config_from_args(args, args.clusters, args.seed, args.sample_size),
                                      args.refine, self_train_from_args(args, args.seed) if args.self_train else None)
        runtime = RuntimeConfig(batch_size=args.batch_size, num_actors=args.num_actors, device=args.device)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    record = run_cluster(args.shards, args.out.rstrip("/"), cfg, args.config_digest, args.local, args.address,
                         runtime)
    print(f"{record['n_images']} images, {record['n_segments']} segments -> {args.clusters} clusters "
          f"in {record['seconds']} s; pseudo-labels in {args.out}/labels")
    for error in record["failed"]:
        print(f"  failed {error['image_id']}: {error['reason']}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m jobs.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
