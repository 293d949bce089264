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
regions' classes (OUT/region_clusters.npz). With --set pseudo_labels.self_train.backbone=NAME,
NAME's feature map of every image is made first, by Ray actors too (jobs.head_maps:
OUT/head_maps, OUT/head_map_errors), and the head reads it next to the stored patch features.

Same seed + same extracted images = the same labels, however the shards cut and order the rows
(every dataset-wide fit samples and orders by (image id, index): pipeline.semantic.keyed_sample).
A rerun with the same settings overwrites the same files (and embeds no region twice).
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

from jobs.extract import RUNTIME_FLAGS
from jobs.head_maps import run_for_head
from jobs.options import Flag, Options, dry_run
from jobs.region_crops import run_region_crops
from pipeline.semantic.clustering import SegmentClusters
from pipeline.semantic.pseudo_labels import REFINE_MODES, encode_label_png
from pipeline.io.schema import segment_label_table
from pipeline.semantic.head_map_rows import head_maps_of
from pipeline.config import ExtractConfig, RuntimeConfig
from pipeline.semantic.labelling import (LabelClusters, PseudoLabelConfig, fit_label_clusters, fit_region_classes,
                                         head_rows, missing_head_features, pseudo_labels, segment_digests, segment_rows,
                                         self_train, self_trained_labels, source_image, with_head_features)
from pipeline.io.shards import shard_config, write_shard

# What `deep-spectral cluster --help` says (the module docstring is for developers).
HELP = """Segments in an extraction's shards -> dataset-wide clusters -> pseudo-label PNGs.

  deep-spectral cluster SHARDS --out LABELS --clusters 20
  deep-spectral cluster SHARDS --out LABELS --config voc-semantic

SHARDS is an `extract` output written with segments. LABELS gets labels/STEM.png (palette PNG
per image, 0 = background, c + 1 = cluster c), segment_labels/ (one Parquet row per segment),
clusters.npz (the centroids, to label new images the same way) and cluster.json (settings,
digests, counts, failed images). The same seed and extracted images give the same labels,
however the shards hold the rows.
"""

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


PSEUDO_LABEL_FLAGS = [
    Flag("pseudo_labels.cluster.n_clusters", "foreground clusters", "--clusters"),
    Flag("pseudo_labels.cluster.seed", "seed of the clustering (and of the head)", "--seed"),
    Flag("pseudo_labels.refine", "pixel labels: cell classes, or snapped to image edges by the guided filter or "
         "the bilateral solver", choices=tuple(REFINE_MODES)),
    Flag("pseudo_labels.self_train", "label pixels with a head trained on the pseudo-labels (shards extracted with "
         "stored features or segment patches)", "--self-train", const={}),
    Flag("pseudo_labels.region_crops.backbone", "crop each image's regions, embed them with this registry entry "
         "(e.g. efficientnet_lite0_supervised: ImageNet-supervised, label its figures so) and cluster them again",
         "--region-crops", metavar="NAME"),
]
ACTOR_FLAGS = [f for f in RUNTIME_FLAGS if f.path in ("runtime.batch_size", "runtime.num_actors", "runtime.device",
                                                      "runtime.address")]
OPTIONS = Options({"pseudo_labels": PseudoLabelConfig, "runtime": RuntimeConfig}, PSEUDO_LABEL_FLAGS + ACTOR_FLAGS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", help="extraction output (written with segments)")
    parser.add_argument("--out", required=True, help="output folder or fsspec URL")
    parser.add_argument("--config-digest", default=None, help="which extraction config of SHARDS to cluster "
                        "(default: the only one with segments)")
    parser.add_argument("--local", action="store_true", help="run in this process instead of a Ray task")
    OPTIONS.add_to(parser)


def seeded(labels: PseudoLabelConfig, seed: int) -> PseudoLabelConfig:
    """The labelling config of one seed: the clustering's, and the head's with it (one seed names
    one run, as evaluate's seeds do)."""
    head = labels.self_train and dataclasses.replace(labels.self_train, seed=seed)
    return dataclasses.replace(labels, cluster=dataclasses.replace(labels.cluster, seed=seed), self_train=head)


def main(args: argparse.Namespace) -> int:
    configs = OPTIONS.configs(args)
    cfg, runtime = configs["pseudo_labels"], configs["runtime"]
    cfg = configs["pseudo_labels"] = seeded(cfg, cfg.cluster.seed)
    if args.dry_run:
        return dry_run(configs, {})
    record = run_cluster(args.shards, args.out.rstrip("/"), cfg, args.config_digest, args.local, runtime.address,
                         runtime)
    print(f"{record['n_images']} images, {record['n_segments']} segments -> {cfg.cluster.n_clusters} clusters "
          f"in {record['seconds']} s; pseudo-labels in {args.out}/labels")
    for error in record["failed"]:
        print(f"  failed {error['image_id']}: {error['reason']}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m jobs.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
