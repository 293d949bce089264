"""Extraction job: images -> eigenvector shards, on local Ray or a cluster.

    python -m jobs.extract SOURCE --out OUT                    # starts a local Ray
    ray job submit --working-dir . -- python -m jobs.extract SOURCE --out OUT
    python -m jobs.extract --dataset voc --root VOCdevkit/VOC2012 --split Segmentation/val --out OUT
    python -m jobs.extract --dataset coco --root URI --split train2017 --annotations FILE --out OUT
    python -m jobs.extract --dataset coco --root URI/train2014 --image-ids coco_20k_filenames.txt --out OUT

SOURCE is a folder, glob or list file; --dataset reads a dataset's own layout instead
(pipeline/io/dataset_listing.py). The driver lists the images, drops what OUT already holds for
this configuration, and maps the rest through a CPU decode stage and `ExtractActor`s (one per
GPU, or CPU actors; jobs/runner.py) that compute and write their own shards.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone

from jobs import runner
from pipeline.spectral.affinity import GRAPH_BUILDERS
from pipeline.config import (PATCH_FEATURES, SPARSE_DEFAULT_TOPK, BackboneConfig, EigenConfig, ExtractConfig,
                             GraphConfig, RuntimeConfig, SegmentsConfig, segments_source)
from pipeline.io.schema import eigen_table, error_table
from pipeline.io.attempts import Attempts
from pipeline.io.lease import RunLease
from pipeline.io.shards import EIGEN_DIR, ERROR_DIR, rows_by_id, shard_files, shard_name
from pipeline.io.sources import ImageRef, list_images
from pipeline.io.dataset_listing import DATASETS, dataset_images
from pipeline.features.registry import get_spec
from pipeline.semantic.segments import segment_features_kind


class ExtractActor:
    """Ray Data callable: loads the backbone once, extracts each batch and commits its shards
    (through jobs.runner.guarded_batch: poison batches and the run lease); on Ray a decode stage
    (jobs.runner.DecodeActor) has decoded the batch's images already."""

    def __init__(self, config_json: str, out: str, device: str, batch_size: int, threads: int,
                 run_id: str | None = None, max_worker_deaths: int = 2):
        from pipeline.batch.extractor import SpectralExtractor

        runner.set_threads(threads)
        self.cfg = ExtractConfig.from_dict(json.loads(config_json))
        self.out, self.run_id, self.max_deaths = out, run_id, max_worker_deaths
        self.extractor = SpectralExtractor(self.cfg, device=device, batch_size=batch_size)
        self.source_digest = segments_source(self.cfg).digest()
        self.attempts = Attempts(out)

    def __call__(self, batch: dict) -> dict:
        refs = [ImageRef(str(i), str(u)) for i, u in zip(batch["image_id"], batch["uri"])]
        digest = self.extractor.config_digest
        # With run_extract(reuse=...): the shard holding each image's segments_source row.
        stored = dict(zip(batch["image_id"], batch.get("stored") or [""] * len(refs)))

        decoded = runner.decoded_items(batch)  # the decode stage's work, on Ray

        def extract(part: list[ImageRef]) -> dict:
            fresh = [r for r in part if not stored[r.image_id]]
            rows, errors = self.extractor([decoded[r.image_id] for r in fresh] if decoded else fresh)
            reused = [r for r in part if stored[r.image_id]]
            if reused:
                found = rows_by_id([(r.image_id, stored[r.image_id]) for r in reused], self.source_digest)
                more, failed = self.extractor.from_stored([(r, found.get(r.image_id)) for r in reused])
                rows, errors = rows + more, errors + failed
            return {"rows": rows, "errors": errors}

        def shards(result: dict) -> tuple[str, dict]:
            config_json = self.extractor.config_json
            return shard_name(digest, [r.image_id for r in refs]), {
                EIGEN_DIR: (eigen_table(result["rows"], self.cfg.eigen.storage_dtype) if result["rows"] else None,
                            config_json),
                ERROR_DIR: (error_table(result["errors"]) if result["errors"] else None, config_json)}

        return runner.guarded_batch(self, digest, refs, extract, shards, batch.get(runner.DEFER_COMMIT, False))


def pending_images(source: str | None, out: str, cfg: ExtractConfig, retry_errors: bool,
                   refs: list[ImageRef] | None = None) -> tuple[list[ImageRef], int]:
    """(images still to do, number already done or failed) for this configuration; `refs`
    replaces listing SOURCE (an evaluation's benchmark images)."""
    refs = list_images(source) if refs is None else refs
    return runner.not_done(refs, out, cfg.digest(), EIGEN_DIR, retry_errors)


def run_extract(source: str | None, out: str, cfg: ExtractConfig, runtime: RuntimeConfig,
                refs: list[ImageRef] | None = None, local: bool = False, reuse: str | None = None) -> dict:
    """Process every pending image; prints progress, returns a summary and writes it to
    OUT/runs/ (pipeline.io.runlog) unless there was nothing to do. Listing and the whole run
    happen under OUT's run lease.

    refs: the images to do instead of listing SOURCE. local: run the same ExtractActor in
    this process instead of on Ray (no cluster; one model on all cores). reuse: another
    output holding rows of segments_source(cfg) (the same extraction without segments, with
    stored features): images found there get segments added to that row instead of a forward
    pass; the others are extracted as usual.
    """
    started, clock = datetime.now(timezone.utc), time.monotonic()

    def run(lease: RunLease) -> dict:
        todo, skipped = pending_images(source, out, cfg, runtime.retry_errors, refs)
        summary = {"source": source, "out": out, "config_digest": cfg.digest(), "config": cfg.to_dict(),
                   "skipped": skipped, "processed": 0, "failed": 0, "errors": []}
        if not todo:
            print(f"nothing to do: all {skipped} images already in {out} for config {cfg.digest()}")
            return summary
        print(f"{len(todo)} images to do, {skipped} already done for config {cfg.digest()}")
        batches = runner.cut_batches(todo, runtime.batch_size)
        if reuse:
            stored = shard_files(reuse, segments_source(cfg).digest())
            print(f"reusing the rows of {sum(r.image_id in stored for r in todo)} of them from {reuse} "
                  f"(config {segments_source(cfg).digest()})")
            batches = [{**b, "stored": [stored.get(i, "") for i in b["image_id"]]} for b in batches]
            summary["reused_from"] = reuse
        ran: dict = {}
        outcome = runner.drive(batches, len(todo), ExtractActor, {"config_json": cfg.to_json(), "out": out},
                               runtime, local, "deep-spectral-extract", lease.owner, decode_stage(cfg, out), ran=ran)
        summary = runner.finish_summary(summary, outcome, started, clock, local, runtime, out, lease, ran)
        print(f"done: {summary['processed']} images written, {summary['failed']} failed, "
              f"{summary['seconds']} s ({summary['images_per_second']} images/s); shards in {out}/{EIGEN_DIR}, "
              f"errors in {out}/{ERROR_DIR}, run summary {summary['run_file']}")
        for err in summary["errors"]:
            print(f"  failed {err['image_id']}: {err['reason']}")
        return summary

    return runner.run_leased(out, runtime, run)


def decode_stage(cfg: ExtractConfig, out: str, digest: str | None = None) -> dict:
    """The decode stage of a job that extracts with `cfg` (under its own digest unless given)."""
    return runner.decode_stage(digest or cfg.digest(), out, cfg.backbone.name, cfg.backbone.long_side,
                               cfg.max_pixels)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_options(parser)
    parser.add_argument("--out", required=True, help="output folder or fsspec URL")
    add_extract_options(parser)
    parser.add_argument("--summary", default=None, help="write the run summary JSON here")


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """SOURCE, or --dataset NAME --root URI and its options (shared with `nightly`)."""
    parser.add_argument("source", nargs="?", default=None,
                        help="folder, glob, list file (.txt) or fsspec URL of images (or use --dataset)")
    group = parser.add_argument_group("datasets", "a dataset's own layout instead of SOURCE")
    group.add_argument("--dataset", choices=list(DATASETS), default=None,
                       help="folder: like SOURCE; voc: a VOCdevkit year folder; coco: images + JSON or id list")
    group.add_argument("--root", default=None, help="the dataset's folder or fsspec URL")
    group.add_argument("--split", default=None,
                       help="voc: ImageSets/Main/SPLIT.txt (default trainval) or Segmentation/SPLIT; "
                            "coco: the images subfolder (train2017)")
    group.add_argument("--annotations", default=None, help="coco: instances JSON (all its images)")
    group.add_argument("--image-ids", default=None,
                       help="coco: list file, one file name or numeric id per line (COCO20k)")


def images_from_args(args: argparse.Namespace) -> tuple[str, list[ImageRef]]:
    """(what was listed, in words; the images). ValueError / FileNotFoundError for flags that do
    not fit together, an unreadable layout, or an empty listing."""
    options = {"split": args.split, "annotations": args.annotations, "image_ids": args.image_ids}
    if args.source is not None:
        if args.root is not None or args.dataset not in (None, "folder"):
            raise ValueError("give SOURCE (a folder, glob or list file) or --dataset NAME --root URI, not both")
        name, root = "folder", args.source
    elif args.root is None:
        raise ValueError(f"--dataset {args.dataset} needs --root URI" if args.dataset else
                         "give SOURCE (a folder, glob or list file) or --dataset NAME --root URI")
    else:
        name, root = args.dataset or "folder", args.root
    # run_extract takes a list today; the listing itself streams (see dataset_sources).
    refs = list(dataset_images(name, root, **options))
    if not refs:
        raise FileNotFoundError(f"no images found in {root}")
    described = args.source or " ".join([name, root] + [f"{k}={v}" for k, v in options.items() if v])
    return described, refs


def add_extract_options(parser: argparse.ArgumentParser) -> None:
    """Every option of ExtractConfig and RuntimeConfig (shared with `evaluate`)."""
    d, g, e = BackboneConfig(), GraphConfig(), EigenConfig()
    parser.add_argument("--backbone", default=d.name)
    parser.add_argument("--weights", default=None, help="local path or fsspec URL of weights (default: registry)")
    parser.add_argument("--features", choices=PATCH_FEATURES, default=None,
                        help="patch features (default: the backbone's measured default)")
    parser.add_argument("--long-side", type=int, default=d.long_side,
                        help="resize the long side to this many px; 0 = native size cropped to the patch grid")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=d.precision,
                        help="arithmetic of the forward pass: bf16 autocast is ~2x faster on GPUs with "
                             "bf16 tensor cores (measured against fp32: docs/scale.md)")
    parser.add_argument("--k", type=int, default=e.k, help="number of eigenvectors")
    parser.add_argument("--lambda-knn", type=float, default=g.knn_lambda, help="weight of the KNN colour graph")
    parser.add_argument("--knn-scale", choices=["relative", "absolute"], default=g.knn_scale)
    parser.add_argument("--graph", choices=sorted(GRAPH_BUILDERS), default=g.kind,
                        help="dense: the N x N feature graph; sparse: each node's top-k (--knn) "
                             "built in row blocks; lowrank: shifted cosines f fᵀ + s solved from the "
                             "features (both never N x N, for large grids; docs/sparse.md)")
    parser.add_argument("--knn", "--sparsify-topk", dest="sparsify_topk", type=int, default=None,
                        help="keep each node's top-k feature affinities (symmetrised); "
                             f"--graph sparse defaults to {SPARSE_DEFAULT_TOPK}")
    parser.add_argument("--upsample", type=int, default=g.upsample, help="feature-grid upsampling factor")
    parser.add_argument("--eigensolver", default=e.method)
    parser.add_argument("--float16", action="store_true", help="store eigenvectors as float16")
    parser.add_argument("--store-features", action="store_true", help="also store the patch features")
    sg = SegmentsConfig()
    parser.add_argument("--segments", type=int, default=sg.n_segments,
                        help="k-means segments per image for semantic segmentation (0 = none; paper: 15)")
    parser.add_argument("--segment-eigenvectors", type=int, default=sg.n_eigenvectors,
                        help="eigenvectors 1..m that the per-image k-means clusters")
    parser.add_argument("--segment-features", type=segment_features_kind, default=None,
                        metavar="{crop,pool,keys,blockB}[+...]",
                        help="default: the backbone registry's (crop; pool+block9 on the offline backbone, "
                             "crop with --segment-backbone); "
                             "crop: re-embed each segment's box crop (CLS); pool: mean patch feature; "
                             "keys: mean last-block attention key; blockB: mean of the residual stream "
                             "after block B (0-based), from one more forward pass when segments are added; "
                             "kinds join with '+' (pool+block9, crop+pool+block9: each at unit norm, "
                             "concatenated)")
    parser.add_argument("--segment-backbone", default=sg.backbone, metavar="NAME",
                        help="re-embed segment crops (--segment-features crop, alone or joined) with this "
                             "registry entry "
                             "instead of the graph's backbone, e.g. efficientnet_lite0_supervised "
                             "(ImageNet-supervised: label its figures so)")
    parser.add_argument("--segment-background", choices=["fiedler", "border"], default=sg.background,
                        help="background segments: the Fiedler vector's background side, or only "
                             "the segment covering most of the border (the reference)")
    parser.add_argument("--store-segment-patches", action="store_true",
                        help="also store every patch's pooled-kind features (float16), for a "
                             "self-training head over them (--self-train-features segment)")
    parser.add_argument("--segment-seed", type=int, default=sg.seed)
    parser.add_argument("--segment-erode", type=int, default=sg.erode,
                        help="patch-level erosions of each segment before its box is taken")
    parser.add_argument("--segment-dilate", type=int, default=sg.dilate,
                        help="patch-level dilations after the erosion (the reference's semantic "
                             "recipe: 5)")
    parser.add_argument("--reuse-shards", default=None,
                        help="an output holding this extraction without segments but with "
                             "--store-features: add segments to its rows instead of a forward pass")
    parser.add_argument("--batch-size", type=int, default=RuntimeConfig.batch_size)
    parser.add_argument("--num-actors", type=int, default=None)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--retry-errors", action="store_true", help="retry images recorded as failed")
    parser.add_argument("--max-failures", default=RuntimeConfig.max_failures, metavar="N|P%|N,P%",
                        help="failed images the run tolerates before it exits 1: N images, P%% of the run's "
                             "images, or the larger of both (default %(default)s); a run in which every image "
                             "failed always exits 1")
    parser.add_argument("--max-worker-deaths", type=int, default=RuntimeConfig.max_worker_deaths,
                        help="worker processes a batch may lose before its images run alone; an image "
                             "alone that loses as many becomes an error row (stage worker)")
    parser.add_argument("--lease-heartbeat-s", type=float, default=RuntimeConfig.lease_heartbeat_s,
                        help="how often the driver renews its run lease in OUT")
    parser.add_argument("--lease-stale-s", type=float, default=RuntimeConfig.lease_stale_s,
                        help="a lease not renewed for this long is taken over by a new driver")
    parser.add_argument("--address", default=None,
                        help="Ray address (default: RAY_ADDRESS, else a new local Ray; 'auto' joins "
                             "a cluster started with `ray start` on this machine)")


def configs_from_args(args: argparse.Namespace) -> tuple[ExtractConfig, RuntimeConfig]:
    """The run's configs from its flags; a bad value or flags that contradict each other exit
    (status 2, one line naming the field) before any listing, lease or write."""
    try:
        get_spec(args.backbone)  # an unknown name fails here, listing the known ones
        cfg = _extract_config(args)
        runtime = RuntimeConfig(batch_size=args.batch_size, num_actors=args.num_actors,
                                device=args.device, retry_errors=args.retry_errors, address=args.address,
                                max_worker_deaths=args.max_worker_deaths, lease_heartbeat_s=args.lease_heartbeat_s,
                                lease_stale_s=args.lease_stale_s, max_failures=args.max_failures)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    return cfg, runtime


def _segment_features(args: argparse.Namespace) -> str:
    """--segment-features, else the backbone registry's default for segments (crop when a
    segment backbone re-embeds them, or when no segments are made)."""
    if args.segment_features:
        return args.segment_features
    if args.segment_backbone or not args.segments:
        return SegmentsConfig().features
    return get_spec(args.backbone).segment_features


def _extract_config(args: argparse.Namespace) -> ExtractConfig:
    return ExtractConfig(
        backbone=BackboneConfig(name=args.backbone, weights=args.weights, features=args.features,
                                long_side=args.long_side or None, precision=args.precision),
        graph=GraphConfig(knn_lambda=args.lambda_knn, knn_scale=args.knn_scale,
                          upsample=args.upsample, kind=args.graph,
                          sparsify_topk=args.sparsify_topk or (SPARSE_DEFAULT_TOPK if args.graph == "sparse" else None)),
        eigen=EigenConfig(k=args.k, method=args.eigensolver,
                          storage_dtype="float16" if args.float16 else "float32"),
        segments=SegmentsConfig(n_segments=args.segments, n_eigenvectors=args.segment_eigenvectors,
                                features=_segment_features(args), background=args.segment_background,
                                backbone=args.segment_backbone, store_patches=args.store_segment_patches,
                                seed=args.segment_seed, erode=args.segment_erode, dilate=args.segment_dilate),
        store_features=args.store_features,
    )


def main(args: argparse.Namespace) -> int:
    cfg, runtime = configs_from_args(args)
    try:
        source, refs = images_from_args(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = run_extract(source, args.out, cfg, runtime, refs=refs, reuse=args.reuse_shards)
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f, indent=2)
    return runner.exit_status(summary)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m jobs.extract", description=__doc__)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
