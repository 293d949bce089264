"""Dataset-level semantic segmentation over extraction shards (the paper's second stage):
every image's segment features -> dataset-wide clusters -> per-image pseudo-labels.

    segment_feature_batches(shards, digest)     a re-iterable stream of (n, D) feature batches
    fit_segment_clusters(shards, digest, cfg)   -> SegmentClusters (pipeline.semantic.clustering)
    fit_label_clusters(shards, digest, cfg)     -> the clusters labels come from (segments, then regions)
    fit_region_classes(out, digest, cfg)        re-embedded regions (region_crops) -> RegionClasses
    segment_rows(shards, digest)                streams the rows pseudo-labels need
    segment_classes(segment_map, features, model, min_share)   -> (n,) classes 1..C of one image's segments
    row_classes(row, model, min_share, regions) -> (n,) classes 1..C of one row's segments
    pseudo_labels(row, model, cfg, long_side)   -> (segment labels (n,), label image (H, W))
    head_rows(shards, digest, self_train_cfg, maps)         segment_rows with what the head reads
    self_trained_labels(row, head, labels, cfg, long_side)   -> the head's label image (H, W)
    label_cells(row, classes, fiedler_threshold)  (n,) segment classes -> (h, w) class ids per cell

Shards are read a batch at a time, so memory does not grow with the dataset. Every vector a
dataset-wide fit sees is keyed by its image and its index there (a segment, a region's class, a
patch), and the fits sample and order by key (pipeline.semantic.keyed_sample): the same images,
settings and seed give the same labels however the shards cut and order the rows.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Optional

import numpy as np
import pyarrow.compute as pc

from pipeline.config import ExtractConfig, check
from pipeline.semantic.clustering import ClusterConfig, SegmentClusters, TooFewToCluster, fit_clusters
from pipeline.semantic.head_map_rows import HeadMaps, with_head_maps
from pipeline.semantic.keyed_sample import Keys, per_item
from pipeline.semantic.fiedler_cells import fiedler_background, with_fiedler_background
from pipeline.semantic.image_clusters import consolidate, image_regions
from pipeline.semantic.region_crops import RegionCropConfig, relabel
from pipeline.semantic.self_training import SelfTrainConfig, predict_probabilities, train_head, with_labels
from pipeline.features.geometry import geometry_of
from pipeline.io.images import decode_image
from pipeline.semantic.pseudo_labels import REFINE_MODES, label_grid, label_image, label_image_from_scores
from pipeline.io.schema import eigenvectors_of, features_of, list_rows, segment_patch_features_of, segments_of
from pipeline.io.shards import EIGEN_DIR, REGION_DIR, scan_batches, shard_config
from pipeline.io.sources import read_bytes

ROW_COLUMNS = ["image_id", "source_uri", "height", "width", "input_height", "input_width",
               "grid_h", "grid_w", "n_segments", "segment_map", "segment_boxes", "segment_dim",
               "segment_features"]
# What labelling reads of a row: the segments, and the eigenvectors for the Fiedler test per
# cell (PseudoLabelConfig.fiedler_threshold; 60 KB a row at k 15 on a 32 x 32 grid).
LABEL_COLUMNS = ROW_COLUMNS + ["k", "eigenvectors"]


@dataclass(frozen=True)
class PseudoLabelConfig:
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    refine: str = "none"  # pipeline.semantic.pseudo_labels.REFINE_MODES
    # Replace the pixel labels by a linear head's, trained on them (needs stored features).
    self_train: Optional[SelfTrainConfig] = None
    # Per image, a cluster covering less than this share of the foreground gives its segments
    # to the nearest cluster that covers more (pipeline.semantic.image_clusters; 0 = off, the
    # paper's labels). 0.2 was chosen on VOC07's tune part among 0.05-0.4 (16.4 -> 19.5) and
    # check agrees (17.3 -> 19.0), as does COCO128 (15.5 -> 16.1; docs/semantic-results.md).
    min_cluster_share: float = 0.2
    # Rounds of: label every image's segments (consolidated), pool each label's segments into
    # one region, refit the clusters over the regions of the whole dataset (fit_label_clusters).
    # 1 was chosen on VOC07's tune part among 0-2 (19.5 -> 22.5 at share 0.2) and check agrees
    # (19.0 -> 23.3), as does COCO128 (16.1 -> 17.5; docs/semantic-results.md). 0 = the paper's.
    region_rounds: int = 1
    # Re-embed each image's regions (the segments sharing a label) as crops and cluster them
    # again over the dataset (pipeline.semantic.region_crops); None = off.
    region_crops: Optional[RegionCropConfig] = None
    # Cells whose Fiedler value is at most the image's mean + this many standard deviations are
    # background in the labels (and the head's training labels), whatever their segment
    # (pipeline.semantic.fiedler_cells); None = the segments' background alone, the paper's.
    # Regions and clusters are the segments', unchanged.
    fiedler_threshold: Optional[float] = None

    def __post_init__(self):
        check(0 <= self.min_cluster_share <= 1, "pseudo_labels.min_cluster_share", "a share of the foreground in [0, 1]",
              self.min_cluster_share)
        check(self.region_rounds >= 0, "pseudo_labels.region_rounds", ">= 0 (0: none)", self.region_rounds)
        check(self.fiedler_threshold is None or bool(np.isfinite(self.fiedler_threshold)),
              "pseudo_labels.fiedler_threshold", "a number of standard deviations", self.fiedler_threshold)
        check(self.refine in REFINE_MODES, "pseudo_labels.refine", f"one of {list(REFINE_MODES)}", self.refine)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self, extract_digest: str) -> str:
        """Names a clustering run: these settings over the shards of one extraction config."""
        d = self.to_dict()
        # Options added later are left out where they are off, so the runs made before them
        # keep their digests.
        for key in ("min_cluster_share", "region_rounds", "region_crops"):
            if not d[key]:
                del d[key]
        if d["fiedler_threshold"] is None:  # 0 is on: the image's mean
            del d["fiedler_threshold"]
        if d["self_train"] and not d["self_train"]["label_weight"]:
            del d["self_train"]["label_weight"]
        if d["self_train"] and d["self_train"]["backbone"] is None:
            del d["self_train"]["backbone"]
        if d["self_train"]:
            # Settings removed since (SelfTrainConfig.REMOVED_SETTINGS) go back in at the values
            # every run had them at, so runs stored before keep their digests.
            d["self_train"].update(SelfTrainConfig.REMOVED_SETTINGS)
        text = json.dumps({"labels": d, "extract": extract_digest}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def regions_digest(self, extract_digest: str) -> str:
        """Names the re-embedded regions of a run: what decides them (the first clustering, its
        consolidation and refits, the crops' settings) over one extraction; not the pixel
        refinement, the Fiedler test per cell or the head, so runs that differ only there share
        their regions."""
        if self.region_crops is None:
            raise ValueError("no region crops in this labelling config")
        d = dataclasses.asdict(dataclasses.replace(self, refine="none", self_train=None))
        del d["fiedler_threshold"]
        # "sample": the first clustering samples and orders its segments by key
        # (pipeline.semantic.keyed_sample). Regions stored before came from a fit that followed
        # the shards' order, so a rerun into the same OUT embeds them again rather than reuse them.
        text = json.dumps({"regions": d, "extract": extract_digest, "sample": "keyed"}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def segment_digests(shards: str) -> dict[str, int]:
    """Extraction config digest -> number of images with segments, over the shards' rows."""
    counts: dict[str, int] = {}
    for batch in scan_batches(shards, EIGEN_DIR, ["config_digest", "n_segments"]):
        digests = batch.column("config_digest").to_numpy(zero_copy_only=False)
        has = batch.column("n_segments").to_numpy() > 0
        for d in digests[has]:
            counts[d] = counts.get(d, 0) + 1
    return counts


def segment_feature_batches(shards: str, digest: str, batch_rows: int = 1024,
                            image_ids: list[str] | None = None):
    """-> a callable that starts a new pass: yields (Keys, (n, D) float32 features) batches of
    the images with segments (all, or only `image_ids`), each segment keyed by (image id, its
    index in the row)."""
    return _feature_batches(shards, EIGEN_DIR, "segment_dim", "segment_features", digest, batch_rows, image_ids)


def _feature_batches(out: str, kind: str, width: str, values: str, digest: str, batch_rows: int,
                     image_ids: list[str] | None, index_column: str | None = None):
    """-> a callable that starts a new pass over OUT/kind (`digest`'s rows, all or `image_ids`'):
    yields each batch's `values` lists (several vectors per row, `width` wide) as (Keys, one
    (n, width) float32 array); rows with a null width hold none. A vector's key is its row's
    image id and its position in the row, or with `index_column` that column's value (one
    vector per row): fit_clusters samples and orders by it, not by the shards' order."""
    extra = [index_column] if index_column else []
    def stream() -> Iterator[tuple[Keys, np.ndarray]]:
        for batch in scan_batches(out, kind, ["image_id", width, values] + extra, digest, batch_rows, image_ids):
            dims = batch.column(width).drop_null()
            if len(dims):
                dim = dims[0].as_py()
                flat = pc.list_flatten(batch.column(values)).to_numpy(zero_copy_only=False)
                per_row = pc.fill_null(pc.list_value_length(batch.column(values)), 0).to_numpy() // dim
                if index_column:
                    index = np.repeat(batch.column(index_column).to_numpy(zero_copy_only=False), per_row)
                else:  # 0..n-1 within each row
                    index = np.arange(per_row.sum()) - np.repeat(np.cumsum(per_row) - per_row, per_row)
                keys = Keys(per_item(batch.column("image_id").to_pylist(), per_row), index.astype(np.int64))
                yield keys, flat.reshape(-1, dim).astype(np.float32, copy=False)
    return stream


def fit_segment_clusters(shards: str, digest: str, cfg: ClusterConfig, batch_rows: int = 1024,
                         image_ids: list[str] | None = None) -> SegmentClusters:
    return fit_clusters(segment_feature_batches(shards, digest, batch_rows, image_ids), cfg)


def region_feature_batches(shards: str, digest: str, model: SegmentClusters, min_share: float,
                           batch_rows: int = 256, image_ids: list[str] | None = None):
    """-> a callable that starts a new pass: yields (Keys, (r, D)) batches of every image's
    regions (its segments grouped by their segment_classes under `model`, image_regions), each
    keyed by (image id, its class): the refit samples and orders them by key."""
    def stream() -> Iterator[tuple[Keys, np.ndarray]]:
        for rows in _batched(segment_rows(shards, digest, batch_rows, image_ids), batch_rows):
            regions, ids, index = [], [], []
            for row in rows:
                segment_map, _, features = segments_of(row)
                if len(features):
                    classes = segment_classes(segment_map, features, model, min_share)
                    regions.append(image_regions(features, segment_areas(segment_map, len(features)), classes))
                    index.append(np.unique(classes))  # image_regions' rows: one per class, ascending
                    ids.append(np.full(len(index[-1]), row["image_id"], object))
            if regions:
                yield Keys(np.concatenate(ids), np.concatenate(index).astype(np.int64)), np.concatenate(regions)
    return stream


class LabelClusters(NamedTuple):
    model: SegmentClusters  # the clusters labels are assigned from
    n_segments: int  # segments clustered
    n_regions: int | None  # regions of the last refit; None without one


def fit_label_clusters(shards: str, digest: str, cfg: PseudoLabelConfig, batch_rows: int = 1024,
                       image_ids: list[str] | None = None) -> LabelClusters:
    """k-means over the segments, then cfg.region_rounds refits of the centroids over every
    image's regions under the last model. The refits keep the segments' PCA: the segments are
    what gets labelled, and a dataset has fewer regions to fit one on. A dataset with fewer
    regions than clusters keeps the last model it could fit. Streamed like the segments:
    memory stays flat."""
    segments = model = fit_segment_clusters(shards, digest, cfg.cluster, batch_rows, image_ids)
    n_regions = None
    for _ in range(cfg.region_rounds):
        try:
            model = fit_clusters(region_feature_batches(shards, digest, model, cfg.min_cluster_share,
                                                        image_ids=image_ids), cfg.cluster, projection=segments)
        except TooFewToCluster:
            break
        n_regions = model.n_fitted
    return LabelClusters(model, segments.n_fitted, n_regions)


class RegionClasses:
    """The second clustering, over re-embedded regions: its model and every image's regions'
    new classes. Holds two small integer arrays per image (its labels and their classes), not
    features."""

    def __init__(self, model: SegmentClusters, by_image: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.model, self.by_image = model, by_image

    def relabel(self, image_id: str, classes: np.ndarray) -> np.ndarray:
        """An image's (n,) segment classes under the first clustering -> under this one."""
        if image_id not in self.by_image:
            raise ValueError(f"{image_id}: its regions were not re-embedded (see the run's region_errors)")
        labels, new = self.by_image[image_id]
        return relabel(classes, labels, new)


def region_crop_batches(out: str, digest: str, batch_rows: int = 1024, image_ids: list[str] | None = None):
    """-> a callable that starts a new pass: yields (Keys, (r, F) float32 features) of the
    regions under OUT/regions written with `digest` (all, or only `image_ids`'; rows without a
    region are skipped), each keyed by (image id, region label)."""
    return _feature_batches(out, REGION_DIR, "feature_dim", "feature", digest, batch_rows, image_ids, "label")


def fit_region_classes(out: str, digest: str, cfg: ClusterConfig, batch_rows: int = 1024,
                       image_ids: list[str] | None = None) -> RegionClasses:
    """k-means over every re-embedded region under OUT/regions (`digest`; all images, or only
    `image_ids`), streamed as the segments are, then each region's new class (cluster + 1)."""
    model = fit_clusters(region_crop_batches(out, digest, batch_rows, image_ids), cfg)
    found: dict[str, tuple[list, list]] = {}
    for batch in scan_batches(out, REGION_DIR, ["image_id", "label", "feature"], digest, batch_rows, image_ids):
        ids, labels = batch.column("image_id").to_pylist(), batch.column("label").to_pylist()
        features = list_rows(batch.column("feature"))
        has = [i for i, f in enumerate(features) if f is not None]
        new = (model.assign(np.stack([features[i] for i in has])) + 1).tolist() if has else []
        for image_id in ids:
            found.setdefault(image_id, ([], []))
        for i, c in zip(has, new):
            found[ids[i]][0].append(labels[i])
            found[ids[i]][1].append(c)
    return RegionClasses(model, {i: (np.array(a, np.int64), np.array(b, np.int64)) for i, (a, b) in found.items()})


# SelfTrainConfig.features -> the (width, per-patch values) columns of a shard row it reads,
# and the schema's reader of them (the segments' patch features have no width column: their
# reader takes it from the values' length, as segment_dim also counts crops joined in).
HEAD_FEATURE_COLUMNS = {"tokens": ("feature_dim", "features", features_of),
                        "segment": (None, "segment_patch_features", segment_patch_features_of)}


def with_head_features(cfg: SelfTrainConfig, extract: ExtractConfig) -> SelfTrainConfig:
    """cfg with features None (the default's "where stored") made definite for shards of
    `extract`: the segments' patch features where it stored them, else the tokens."""
    if cfg.features is not None:
        return cfg
    return dataclasses.replace(cfg, features="segment" if extract.segments.store_patches else "tokens")


def missing_head_features(extract: ExtractConfig, features: str) -> str | None:
    """Why shards of `extract` cannot feed a head over `features` (a HEAD_FEATURE_COLUMNS key),
    or None when they can."""
    if features == "tokens" and not extract.store_features:
        return ("pseudo_labels.self_train.features: a head over the tokens needs shards extracted with "
                "extract.store_features (--store-features)")
    if features == "segment" and not extract.segments.store_patches:
        return ("pseudo_labels.self_train.features: a head over the segments' patch features needs shards "
                "extracted with extract.segments.store_patches")
    return None


def segment_rows(shards: str, digest: str, batch_rows: int = 256, image_ids: list[str] | None = None,
                 patch_features: str | None = None) -> Iterator[dict]:
    """Rows (LABEL_COLUMNS) of images with segments, streamed in shard order; with
    `patch_features` (a HEAD_FEATURE_COLUMNS key) also row["patch_features"], (grid_h, grid_w, C)."""
    width, values, read = HEAD_FEATURE_COLUMNS[patch_features] if patch_features else (None, None, None)
    columns = LABEL_COLUMNS + ([c for c in (width, values) if c and c not in LABEL_COLUMNS] if values else [])
    # The float vectors stay one NumPy buffer per batch, sliced per row: as Python lists
    # (to_pylist) they cost more than reading them (the eigenvectors alone 60% more per pass, and
    # self-training reads the patch features once per epoch).
    arrays = ["eigenvectors"] + ([values] if values else [])
    for batch in scan_batches(shards, EIGEN_DIR, columns, digest, batch_rows, image_ids):
        sliced = {name: list_rows(batch.column(name)) for name in arrays}
        for i, row in enumerate(batch.drop_columns(arrays).to_pylist()):
            if row["segment_map"] is not None:
                row.update({name: rows[i] for name, rows in sliced.items()})
                if values:
                    row["patch_features"] = read(row)
                yield row


def row_classes(row: dict, model: SegmentClusters, min_share: float = 0.0,
                regions: RegionClasses | None = None) -> np.ndarray:
    """A shard row with segments -> (n,) int64 classes 1..C of its segments 1..n
    (segment_classes), relabelled by their re-embedded regions' classes when `regions` is given."""
    segment_map, _, features = segments_of(row)
    classes = segment_classes(segment_map, features, model, min_share)
    return classes if regions is None else regions.relabel(row["image_id"], classes)


def pseudo_labels(row: dict, model: SegmentClusters, cfg: PseudoLabelConfig, long_side: int | None,
                  image: np.ndarray | None = None, regions: RegionClasses | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A shard row with segments -> (class of each segment 1..n (n,) int, (H, W) uint8 labels).

    Classes are cluster + 1 (of `regions`' clustering when given); the background segment is 0.
    `image` (decoded as extraction decoded it) is read from the row's source when pixel
    refinement needs it and none is given.
    """
    labels = row_classes(row, model, cfg.min_cluster_share, regions)
    grid = label_cells(row, labels, cfg.fiedler_threshold)
    if cfg.refine != "none" and image is None:
        image = source_image(row)
    return labels, label_image(grid, geometry_of(row, long_side), image, cfg.refine)


def label_cells(row: dict, classes: np.ndarray, fiedler_threshold: float | None = None) -> np.ndarray:
    """A row (LABEL_COLUMNS) and its segments' (n,) classes -> (grid_h, grid_w) uint8 class ids
    per cell: each segment's class, and with `fiedler_threshold` the cells the Fiedler test
    calls background set to 0 (pipeline.semantic.fiedler_cells)."""
    grid = label_grid(segments_of(row)[0], classes)
    if fiedler_threshold is None:
        return grid
    return with_fiedler_background(grid, fiedler_background(eigenvectors_of(row), fiedler_threshold))


def source_image(row: dict) -> np.ndarray:
    """The row's source image, decoded as extraction decoded it (H, W, 3) uint8."""
    return decode_image(read_bytes(row["source_uri"]))


def segment_classes(segment_map: np.ndarray, features: np.ndarray, model: SegmentClusters,
                    min_share: float = 0.0) -> np.ndarray:
    """One image's (h, w) segment map (0 = background) and (n, D) segment features -> (n,)
    int64 classes 1..C: the nearest cluster + 1, consolidated per image when min_share > 0."""
    if not len(features):
        return np.zeros(0, np.int64)
    if not min_share:
        return model.assign(features).astype(np.int64) + 1
    return consolidate(model.distances(features), segment_areas(segment_map, len(features)),
                       min_share).astype(np.int64) + 1


def segment_areas(segment_map: np.ndarray, n: int) -> np.ndarray:
    """(h, w) segment map, n segments -> (n,) cells of segments 1..n."""
    return np.bincount(segment_map.ravel(), minlength=n + 1)[1:n + 1]


def head_rows(shards: str, digest: str, cfg: SelfTrainConfig, maps: HeadMaps | None = None,
              image_ids: list[str] | None = None) -> Iterator[dict]:
    """segment_rows with row["patch_features"] what the head reads: the stored cfg.features,
    joined with the image's second-network map where `maps` (cfg.backbone's) are given (None
    where the image has none)."""
    features = cfg.features or with_head_features(cfg, ExtractConfig.from_dict(shard_config(shards, digest))).features
    rows = segment_rows(shards, digest, image_ids=image_ids, patch_features=features)
    if maps is None:
        return rows
    return (row for batch in _batched(rows, 32) for row in with_head_maps(batch, maps))  # maps read 32 at a time


def self_train(shards: str, digest: str, model: SegmentClusters, cfg: SelfTrainConfig,
               image_ids: list[str] | None = None, min_share: float = 0.0, regions: RegionClasses | None = None,
               fiedler_threshold: float | None = None, maps: HeadMaps | None = None):
    """Train a head on every patch's stored feature (cfg.features: extracted with
    extract.store_features, or extract.segments.store_patches; joined with cfg.backbone's `maps`) and its
    pseudo-label (row_classes with min_share and `regions`, label_cells with fiedler_threshold)
    -> the head (pipeline.semantic.self_training). An image that has no pseudo-label (its
    regions failed to embed) or no map is left out."""
    def epoch():
        for batch in _batched(head_rows(shards, digest, cfg, maps, image_ids), 32):
            features, labels, ids = [], [], []
            for row in batch:
                if regions is not None and row["image_id"] not in regions.by_image or row["patch_features"] is None:
                    continue
                classes = row_classes(row, model, min_share, regions)
                grid = row["patch_features"]
                features.append(grid.reshape(-1, grid.shape[-1]))
                labels.append(label_cells(row, classes, fiedler_threshold).ravel())
                ids.append(row["image_id"])
            if features:
                # Each patch keyed by (image id, its cell's index): the head's sample is chosen
                # and ordered by key (self_training.patch_sample), not by the shards' order.
                counts = [len(f) for f in features]
                index = np.arange(sum(counts)) - np.repeat(np.cumsum(counts) - counts, counts)
                yield np.concatenate(features), np.concatenate(labels), Keys(per_item(ids, counts), index)
    n_classes = len((regions.model if regions is not None else model).centroids) + 1
    return train_head(epoch, n_classes, cfg)


def self_trained_labels(row: dict, head, segment_labels: np.ndarray, cfg: PseudoLabelConfig,
                        long_side: int | None, image: np.ndarray | None = None) -> np.ndarray:
    """A row read with patch_features (segment_rows), its segments' pseudo-labels (n,)
    (pseudo_labels) -> (H, W) uint8 labels: the head's probabilities blended with the labels
    (cfg.self_train.label_weight), refined at pixels as the labels are (cfg.refine)."""
    st = cfg.self_train
    if row["patch_features"] is None:
        raise ValueError(f"{row['image_id']}: no {st.backbone} map for the head (its error row is in OUT/head_map_errors)")
    probabilities = predict_probabilities(head, row["patch_features"])
    scores = with_labels(probabilities, label_cells(row, segment_labels, cfg.fiedler_threshold), st.label_weight)
    if cfg.refine != "none" and image is None:
        image = source_image(row)
    return label_image_from_scores(scores, geometry_of(row, long_side), image, cfg.refine)


def _batched(rows: Iterator[dict], n: int) -> Iterator[list[dict]]:
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
