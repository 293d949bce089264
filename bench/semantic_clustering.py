"""Prints docs/semantic-results.md's clustering-lever tables (VOC07): clustering levers on one extraction's stored segments.

    python -m bench.semantic_clustering --shards SHARDS --config-digest D \\
        --voc-root VOC2007 --split Segmentation/trainval --cluster-split trainval \\
        --part tune=tune_even.txt --part check=check_odd.txt [--seeds 5] [--levers kmeans area over40 ...]

The segments and their features are the stored ones (as `evaluate semantic` wrote them); only
the clustering of the segment features changes. Every lever clusters the segments of all
--cluster-split images into 20 foreground clusters, and the masked --split images are scored by
one Hungarian matching (each --part on its own), as `evaluate semantic` does: the `kmeans` row
reproduces its figure. Each scored image's (segment, class) pixel counts are tabulated once, so a
lever costs its clustering only.

Levers: kmeans (pipeline.semantic.clustering without PCA); pcaD (its --pca D); whitenD (its --pca D
--whiten); area (k-means weighted by segment area in cells); overK (k-means with K clusters, then
Ward merging of the K centroids into 20); overKw (the same, merged by k-means of the centroids
weighted by their segment counts); spectral (scikit-learn spectral clustering of a 10-NN cosine
graph of the segments).

--min-cluster-share S ... and --region-rounds N ... label the model levers (kmeans, pcaD, whitenD)
as the pipeline does (pipeline.semantic.image_clusters): each image's segments take their nearest
cluster, a cluster under share S of the image's foreground gives its segments to the nearest one
above it, and N refits of the centroids over every image's regions (the segments grouped by label)
come first; every combination is a row.

--resegment RULE recomputes every image's segments from its stored eigenvectors, with patch
features pooled under them (the extraction must have --store-features), before the levers run:
fixedN (N segments, the extraction's other settings) or gapN (the number of segments chosen per
image by the largest eigengap among eigenvalues 2..N, at least --min-segments).

--segment-features SETTING ... keeps the stored segments but replaces their features by the
mean, under each segment, of a backbone feature kind (keys, blockB: the residual stream after
block B), all kinds from one forward pass per image (the extraction's backbone and long side),
or joins kinds as the pipeline does ("pool+block9": "pool" is the stored pooled features); every
lever then runs once per setting. --cache DIR keeps those features (one .npy per kind) for reruns.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import time

import numpy as np
from sklearn.cluster import AgglomerativeClustering, KMeans, SpectralClustering

from jobs.cluster import pick_digest
from jobs.evaluate_semantic import _parts as part_stems
from pipeline.config import ExtractConfig
from pipeline.evaluation.semantic_metrics import confusion, hungarian_miou
from pipeline.features.geometry import geometry_of
from pipeline.io.ground_truth import voc_split_ids
from pipeline.io.schema import eigenvectors_of, features_of, segments_of
from pipeline.io.semantic_masks import VOC_CLASSES, read_class_mask, voc_semantic
from pipeline.io.shards import EIGEN_DIR, scan_batches, shard_config
from pipeline.semantic.clustering import ClusterConfig, SegmentClusters, clustering_threads, fit_clusters, l2_normalize
from pipeline.semantic.image_clusters import consolidate, image_regions
from pipeline.semantic.labelling import segment_rows
from pipeline.semantic.pseudo_labels import label_image
from pipeline.semantic.segments import (backbone_grids, backbone_kinds, feature_kinds, joined, pooled_features,
                                        pooled_parts, segment_map)

RESEGMENT_COLUMNS = ["image_id", "height", "width", "input_height", "input_width", "grid_h", "grid_w",
                     "k", "eigenvalues", "eigenvectors", "feature_dim", "features"]


def eigengap_count(eigenvalues: np.ndarray, largest: int, smallest: int) -> int:
    """Ascending eigenvalues (lambda_0 = 0 first) -> n in [smallest, largest] maximising the gap
    lambda_n - lambda_(n-1): the number of groups the spectrum separates best."""
    gaps = np.diff(np.asarray(eigenvalues[:largest + 1], dtype=np.float64))  # gaps[i] = l_(i+1) - l_i
    n = np.arange(1, len(gaps) + 1)
    allowed = n >= smallest
    return int(n[allowed][np.argmax(gaps[allowed])]) if allowed.any() else largest


def resegmented_rows(shards: str, digest: str, ids: list[str], rule: str, smallest: int):
    """Rows with segments recomputed by RULE (fixedN | gapN) and pooled patch features."""
    stored = ExtractConfig.from_dict(shard_config(shards, digest)).segments
    kind, largest = re.fullmatch(r"(fixed|gap)(\d+)", rule).groups()
    largest = int(largest)
    for batch in scan_batches(shards, EIGEN_DIR, RESEGMENT_COLUMNS, digest, 64, ids):
        for row in batch.to_pylist():
            n = largest if kind == "fixed" else eigengap_count(row["eigenvalues"], largest, smallest)
            smap = segment_map(eigenvectors_of(row), dataclasses.replace(stored, n_segments=n))
            yield row, smap, pooled_features(features_of(row), smap, int(smap.max()))


def backbone_pooled(shards: str, digest: str, ids: list[str], kinds: list[str]) -> dict[str, np.ndarray]:
    """{kind: (S, C)} each stored segment's mean of that backbone feature kind, in stream order
    (the order load() returns), from one forward pass per image."""
    from pipeline.features.backbones import create_backbone
    from pipeline.io.images import decode_image
    from pipeline.io.sources import read_bytes

    cfg = ExtractConfig.from_dict(shard_config(shards, digest))
    backbone = create_backbone(cfg.backbone.name, weights=cfg.backbone.weights, features=cfg.backbone.features,
                               resize=cfg.backbone.long_side or "crop")
    found: dict[str, list[np.ndarray]] = {kind: [] for kind in kinds}
    started = time.time()
    for i, row in enumerate(segment_rows(shards, digest, image_ids=ids)):
        smap = segments_of(row)[0]
        out = backbone([decode_image(read_bytes(row["source_uri"]), cfg.max_pixels)], also=tuple(kinds))[0]
        for kind, grid in backbone_grids(out, tuple(kinds), cfg.graph.upsample).items():
            found[kind].append(pooled_features(grid, smap, int(smap.max())))
        if i % 200 == 0:
            print(f"  {i} images, {time.time() - started:.0f} s", flush=True)
    return {kind: np.concatenate(v) for kind, v in found.items()}


def clustered_images(shards: str, digest: str, voc_root: str, split: str, cluster_split: str | None):
    """-> (image ids to cluster: the masked split's, then the cluster split's; the masked
    samples by id; the extraction's config)."""
    cfg = ExtractConfig.from_dict(shard_config(shards, digest))
    samples = {s.image_id: s for s in voc_semantic(voc_root, split)}
    root = voc_root.rstrip("/")
    ids = list(samples) + ([f"JPEGImages/{i}.jpg" for i in voc_split_ids(root, cluster_split)]
                           if cluster_split else [])
    ids = list(dict.fromkeys(ids))
    return ids, samples, cfg


def load(shards: str, digest: str, voc_root: str, split: str, cluster_split: str | None,
         resegment: str | None = None, smallest: int = 3):
    """-> (features (S, D) in stream order, areas (S,) cells, scored {image stem: (offset, table)},
    images [(offset, n)] of every clustered image) where table is the (n + 1, classes) pixel
    counts of segment s (0 = background) per class."""
    ids, samples, cfg = clustered_images(shards, digest, voc_root, split, cluster_split)
    features, areas, scored, images, offset = [], [], {}, [], 0
    rows = (resegmented_rows(shards, digest, ids, resegment, smallest) if resegment else
            ((row, *segments_of(row)[::2]) for row in segment_rows(shards, digest, image_ids=ids)))
    for row, smap, f in rows:
        n = len(f)
        features.append(f)
        images.append((offset, n))
        areas.append(np.bincount(smap.ravel(), minlength=n + 1)[1:])
        if row["image_id"] in samples:
            gt = read_class_mask(samples[row["image_id"]].mask_uri)
            pixels = label_image(smap.astype(np.uint8), geometry_of(row, cfg.backbone.long_side))
            stem = os.path.splitext(os.path.basename(row["image_id"]))[0]
            scored[stem] = (offset, confusion(pixels, gt, n + 1, len(VOC_CLASSES)))
        offset += n
    return np.concatenate(features), np.concatenate(areas).astype(np.float64), scored, images


def image_labels(model: SegmentClusters, x: np.ndarray, areas: np.ndarray, images: list, share: float) -> np.ndarray:
    """Every segment's cluster under `model`, consolidated per image (share 0: nearest)."""
    distances = model.distances(x)
    labels = np.argmin(distances, axis=1)
    for offset, n in images if share else []:
        if n:
            labels[offset:offset + n] = consolidate(distances[offset:offset + n], areas[offset:offset + n], share)
    return labels


def region_refits(model: SegmentClusters, x: np.ndarray, areas: np.ndarray, images: list, share: float,
                  rounds: int, cfg: ClusterConfig) -> SegmentClusters:
    """pipeline.semantic.labelling.fit_label_clusters on in-memory segments."""
    segments = model
    for _ in range(rounds):
        labels = image_labels(model, x, areas, images, share)
        regions = np.concatenate([image_regions(x[o:o + n], areas[o:o + n], labels[o:o + n]) for o, n in images if n])
        model = fit_clusters(lambda: iter([regions]), cfg, projection=segments)
    return model


def cluster(lever: str, x: np.ndarray, areas: np.ndarray, n_clusters: int, seed: int,
            images: list | None = None, share: float = 0.0, rounds: int = 0) -> np.ndarray:
    """One lever on (S, D) raw segment features -> (S,) cluster ids 0..n_clusters-1 (the model
    levers labelled with `share` and `rounds` as image_labels and region_refits do). Every lever
    runs on the pipeline's fixed thread counts (clustering_threads), so a seed's figure does not
    depend on the caller's thread count."""
    with clustering_threads():
        return _cluster(lever, x, areas, n_clusters, seed, images or [], share, rounds)


def _cluster(lever, x, areas, n_clusters, seed, images, share, rounds) -> np.ndarray:
    xn = l2_normalize(x)
    if lever == "kmeans" or re.fullmatch(r"(pca|whiten)\d+", lever):
        dim = int(re.sub(r"\D", "", lever) or 0)
        cfg = ClusterConfig(n_clusters=n_clusters, seed=seed, pca_dim=dim, whiten=lever.startswith("whiten"))
        model = region_refits(fit_clusters(lambda: iter([x]), cfg), x, areas, images, share, rounds, cfg)
        return image_labels(model, x, areas, images, share)
    if lever == "area":
        return KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(xn, sample_weight=areas)
    if lever.startswith("over"):
        k = int(lever[4:].rstrip("w"))
        km = KMeans(k, n_init=10, random_state=seed).fit(xn)
        if lever.endswith("w"):
            counts = np.bincount(km.labels_, minlength=k)
            merge = KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(km.cluster_centers_,
                                                                               sample_weight=counts)
        else:
            merge = AgglomerativeClustering(n_clusters, linkage="ward").fit_predict(km.cluster_centers_)
        return merge[km.labels_]
    if lever == "spectral":
        return SpectralClustering(n_clusters, affinity="nearest_neighbors", n_neighbors=10,
                                  assign_labels="cluster_qr", random_state=seed).fit_predict(xn)
    raise ValueError(f"unknown lever {lever!r}")


def score(labels: np.ndarray, scored: dict, stems: set[str] | None, n_clusters: int) -> float:
    """Segment cluster ids -> Hungarian mIoU over the scored images (or the listed stems)."""
    counts = np.zeros((n_clusters + 1, len(VOC_CLASSES)), np.int64)
    for stem, (offset, table) in scored.items():
        if stems is None or stem in stems:
            lookup = np.concatenate([[0], labels[offset:offset + len(table) - 1] + 1])
            np.add.at(counts, lookup, table)
    return hungarian_miou(counts).miou


def add_stored_voc_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags naming one VOC extraction's stored shards and the masked images it scores."""
    parser.add_argument("--shards", required=True)
    parser.add_argument("--config-digest", default=None, help="which extraction (default: the only one)")
    parser.add_argument("--voc-root", required=True)
    parser.add_argument("--split", default="Segmentation/trainval")
    parser.add_argument("--part", action="append", default=[], metavar="NAME=FILE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stored_voc_arguments(parser)
    parser.add_argument("--cluster-split", default=None)
    parser.add_argument("--resegment", default=None, help="fixedN | gapN: segments recomputed (see above)")
    parser.add_argument("--min-segments", type=int, default=3, help="gapN's least segment count")
    parser.add_argument("--clusters", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--levers", nargs="+", default=["kmeans", "pca64", "whiten64", "area", "over40",
                                                        "over40w", "over80", "spectral"])
    parser.add_argument("--segment-features", nargs="+", default=[], metavar="KIND",
                        help="keys | blockB ...: segment features pooled from a forward pass (see above)")
    parser.add_argument("--cache", default=None, help="directory keeping --segment-features' features")
    parser.add_argument("--min-cluster-share", type=float, nargs="+", default=[0.0], metavar="S",
                        help="model levers: per-image consolidation shares (see above)")
    parser.add_argument("--region-rounds", type=int, nargs="+", default=[0], metavar="N",
                        help="model levers: refits over the regions (see above)")
    args = parser.parse_args()

    digest = pick_digest(args.shards, args.config_digest)
    x, areas, scored, images = load(args.shards, digest, args.voc_root, args.split, args.cluster_split,
                            args.resegment, args.min_segments)
    sources = {"stored": x}
    if args.segment_features:
        if args.resegment:
            raise SystemExit("--segment-features pools under the stored segments: leave out --resegment")
        if any("crop" in feature_kinds(s) for s in args.segment_features):
            raise SystemExit("--segment-features pools under the stored segments: crops need an extraction")
        pooled = {"pool": x, **cached_backbone_pooled(args, digest)}
        if any(len(f) != len(x) for f in pooled.values()):
            raise SystemExit("pooled features do not line up with the stored segments (a changed --cache?)")
        sources = {setting: joined([pooled[kind] for kind in pooled_parts(setting)]) for setting in args.segment_features}
    parts = part_stems(args)
    print(f"extraction {digest}: {len(x)} segments, {len(scored)} scored images, "
          f"{args.clusters} clusters + background, {args.seeds} seeds")
    names = ["all"] + list(parts)
    print(f"{'features':>10} {'lever':>10} {'share':>5} {'rounds':>6} " + " ".join(f"{n:>13}" for n in names)
          + f" {'s per seed':>10}")
    model_lever = re.compile(r"kmeans|(pca|whiten)\d+")
    for source, features in sources.items():
        for lever, share, rounds in [(lv, s, r) for lv in args.levers for s in args.min_cluster_share
                                     for r in args.region_rounds if model_lever.fullmatch(lv) or (s, r) == (0, 0)]:
            started, results = time.time(), {n: [] for n in names}
            for seed in range(args.seeds):
                labels = cluster(lever, features, areas, args.clusters, seed, images, share, rounds)
                for name in names:
                    results[name].append(score(labels, scored, parts.get(name), args.clusters))
            seconds = (time.time() - started) / args.seeds
            print(f"{source:>10} {lever:>10} {share:>5} {rounds:>6} " + " ".join(f"{100 * np.mean(v):>7.1f} ± {100 * np.std(v):>3.1f}"
                                                          for v in results.values()) + f" {seconds:>10.1f}",
                  flush=True)


def cached_backbone_pooled(args: argparse.Namespace, digest: str) -> dict[str, np.ndarray]:
    """backbone_pooled for --segment-features, read from / written to --cache when given."""
    kinds = list(dict.fromkeys(k for setting in args.segment_features for k in backbone_kinds(setting)))
    if any("pool" in pooled_parts(s) for s in args.segment_features):
        if ExtractConfig.from_dict(shard_config(args.shards, digest)).segments.features != "pool":
            raise SystemExit("'pool' in --segment-features stands for the stored features: the extraction's must be pool")
    paths = {kind: os.path.join(args.cache, f"{digest}-{kind}.npy") for kind in kinds} if args.cache else {}
    missing = [kind for kind in kinds if not os.path.exists(paths.get(kind, ""))]
    found = {kind: np.load(paths[kind]) for kind in kinds if kind not in missing}
    if missing:
        ids = clustered_images(args.shards, digest, args.voc_root, args.split, args.cluster_split)[0]
        found.update(backbone_pooled(args.shards, digest, ids, missing))
        for kind in missing:
            if args.cache:
                os.makedirs(args.cache, exist_ok=True)
                np.save(paths[kind], found[kind])
    return found


if __name__ == "__main__":
    main()
