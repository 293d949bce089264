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
from jobs.options import Flag, Options, dry_run, write_summary
from pipeline.config import ExtractConfig, RuntimeConfig, segments_source
from pipeline.io.schema import eigen_table, error_table
from pipeline.io.attempts import Attempts
from pipeline.io.lease import RunLease
from pipeline.io.shards import EIGEN_DIR, ERROR_DIR, rows_by_id, shard_files, shard_name
from pipeline.io.sources import ImageRef, list_images
from pipeline.io.dataset_listing import DATASETS, dataset_images
from pipeline.features.registry import get_spec
from pipeline.semantic.segments import segment_features_kind

# What `deep-spectral extract --help` says (the module docstring is for developers).
HELP = """Images -> Parquet shards of each image's graph eigenvectors (and, with segments, per-image
segments for semantic segmentation).

  deep-spectral extract SOURCE --out OUT
  deep-spectral extract --dataset voc --root VOC2007 --split trainval --out OUT --config offline

SOURCE is a folder, glob, list file or fsspec URL; --dataset reads VOC or COCO layouts. OUT gets
eigs/ (one row per image), errors/ (one row per image that failed, with its reason) and runs/
(one summary per run). A rerun skips every image OUT already holds for the same settings.
"""


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
        runner.print_failures(summary)
        return summary

    return runner.run_leased(out, runtime, run)


def decode_stage(cfg: ExtractConfig, out: str, digest: str | None = None) -> dict:
    """The decode stage of a job that extracts with `cfg` (under its own digest unless given)."""
    return runner.decode_stage(digest or cfg.digest(), out, cfg.backbone.name, cfg.backbone.long_side,
                               cfg.max_pixels)


EXTRACT_FLAGS = [
    Flag("extract.backbone.name", "a backbone of the registry (`deep-spectral backbones` lists them)", "--backbone"),
    Flag("extract.backbone.weights", "local path or fsspec URL of the weights (none: the registry's source)"),
    Flag("extract.backbone.long_side", "resize the long side to this many pixels (none: native size)", metavar="PX"),
    Flag("extract.backbone.precision", "arithmetic of the forward pass: bf16 is ~2x faster on GPUs with bf16 "
         "tensor cores (docs/scale.md)", choices=("fp32", "bf16")),
    Flag("extract.eigen.k", "eigenvectors per image", "--eigenvectors"),
    Flag("extract.store_features", "also store the patch features (self-training and stored-row reuse need them)"),
]
SCALE_FLAGS = [
    Flag("extract.graph.kind", "dense: the N x N feature graph; sparse / lowrank: never N x N, for large grids "
         "(docs/sparse.md)", "--graph", choices=("dense", "sparse", "lowrank")),
    Flag("extract.eigen.storage_dtype", "eigenvectors stored as float32 or float16", "--storage-dtype",
         choices=("float32", "float16")),
]
SEGMENT_FLAGS = [
    Flag("extract.segments.n_segments", "k-means segments per image for semantic segmentation (0: none)",
         "--segments"),
    Flag("extract.segments.features", "what describes a segment: crop, pool, keys, blockB, joined with '+' "
         "(docs/semantic.md)", "--segment-features", metavar="KINDS"),
]
RUNTIME_FLAGS = [
    Flag("runtime.batch_size", "images per batch"),
    Flag("runtime.num_actors", "compute actors (none: one per GPU, else per spare CPU core)"),
    Flag("runtime.device", "where the compute actors run", choices=("auto", "cpu", "cuda")),
    Flag("runtime.retry_errors", "run again the images recorded as failed"),
    Flag("runtime.max_failures", "failed images the run tolerates before it exits 1: N, P% of the images, "
         "or the larger of 'N,P%' (a run in which every image failed always exits 1)", metavar="N|P%|N,P%"),
    Flag("runtime.address", "Ray address (none: RAY_ADDRESS, else a new local Ray; 'auto' joins a cluster "
         "started with `ray start` here)"),
]
OPTIONS = Options({"extract": ExtractConfig, "runtime": RuntimeConfig},
                  EXTRACT_FLAGS + SCALE_FLAGS + SEGMENT_FLAGS + RUNTIME_FLAGS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_options(parser)
    parser.add_argument("--out", required=True, help="output folder or fsspec URL")
    parser.add_argument("--reuse-shards", default=None, metavar="OUT2",
                        help="an output holding this extraction without segments but with stored "
                             "features: add segments to its rows instead of a forward pass")
    add_running_options(parser)
    OPTIONS.add_to(parser)


def add_running_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--local", action="store_true", help="run in this process instead of on Ray")
    parser.add_argument("--summary", default=None, help="write the run summary JSON here too")


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


def checked(configs: dict) -> dict:
    """What the configs cannot check alone: the backbone names (listing the known ones) and
    the segment features' kinds. SystemExit(one line) for a bad one."""
    cfg = configs["extract"]
    try:
        get_spec(cfg.backbone.name)
        segment_features_kind(cfg.segments.features)
    except (ValueError, KeyError, argparse.ArgumentTypeError) as exc:
        raise SystemExit(f"error: {str(exc).strip(chr(39))}") from None
    return configs


def configs_from_args(args: argparse.Namespace, options: Options = OPTIONS) -> dict:
    """The run's typed configs (section -> config) from --config, flags and --set; a bad value
    exits (status 2, one line naming the setting) before any listing, lease or write."""
    return checked(options.configs(args))


def main(args: argparse.Namespace) -> int:
    configs = configs_from_args(args)
    cfg, runtime = configs["extract"], configs["runtime"]
    if args.dry_run:
        return dry_run(configs, {"extract": cfg.digest()})
    try:
        source, refs = images_from_args(args)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    summary = run_extract(source, args.out, cfg, runtime, refs=refs, local=args.local, reuse=args.reuse_shards)
    write_summary(args.summary, summary)
    return runner.exit_status(summary)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m jobs.extract", description=__doc__)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
