"""Label job: images -> objects (boxes, instance masks, scores) for a whole dataset, on Ray.

    python -m jobs.label SOURCE --out OUT                      # starts a local Ray
    ray job submit --working-dir . -- python -m jobs.label --dataset coco --root URI \\
        --split train2017 --annotations FILE --out OUT

The same listing, rerun and error-table rules as `extract`, whose shards it writes too (an
image already in OUT/eigs is not written again, and with --store-features its stored features
spare the forward pass). In the same actors each image's eigenvectors and graph become objects
(pipeline.objects.discovery, default: the iterative cut). With --self-train (and
--store-features) a Ray step runs first: images with no row are extracted, a logistic head is
fitted on a fixed-seed sample of the stored rows (pipeline.batch.head_fitting), and the actors
take its mask of each image's patch features as the first object. OUT gets

    OUT/labels/part-*.parquet     one row per object (pipeline.io.schema.OBJECT_SCHEMA)
    OUT/instances.json            class-agnostic COCO instances (boxes, RLE masks, scores)
    OUT/gallery/index.html        a panel per image, or a fixed-seed sample of --gallery N:
                                  thumbs/ on the page, panels/ behind them, object scores
    OUT/heads/DIGEST.json         with --self-train: the fitted head (reruns reuse it)
    OUT/eigs, OUT/errors, OUT/runs    as `extract` writes them
"""
from __future__ import annotations


import argparse
import dataclasses
import json
import os
import sys
import time
from datetime import datetime, timezone
from typing import Iterator

import fsspec
import numpy as np
from PIL import Image

from jobs import extract, runner
from jobs.options import Flag, Options, dry_run, write_summary
from pipeline.config import ExtractConfig, RuntimeConfig
from pipeline.evaluation.panels import GALLERY_DIR, GalleryEntry, gallery_html, panel_name, thumb_name
from pipeline.batch.head_fitting import fit_stored_head, head_sample, head_uri, read_head, write_head
from pipeline.io.attempts import Attempts
from pipeline.io.coco_instances import coco_ids_by_file_name, decode_mask, stable_image_id, write_instances
from pipeline.io.runlog import RUNS_DIR, run_summary_name
from pipeline.io.schema import eigen_table, error_table, object_table
from pipeline.io.shards import (EIGEN_DIR, ERROR_DIR, LABELS_DIR, scan_batches,
                                shard_files, shard_name)
from pipeline.io.sources import ImageRef
from pipeline.detection.checkpoint import resolve as resolve_detector
from pipeline.objects.instances import LabelConfig, label_digest
from pipeline.objects.masks import REFINERS
from pipeline.objects.self_training import Head
from pipeline.semantic.pseudo_labels import decode_label_png

# What `deep-spectral label --help` says (the module docstring is for developers).
HELP = """Images -> objects for a whole dataset: boxes, instance masks and scores, as COCO instances.

  deep-spectral label SOURCE --out OUT
  deep-spectral label --dataset coco --root COCO --split train2017 --annotations FILE --out OUT

OUT gets instances.json (class-agnostic COCO instances: boxes, RLE masks, scores; what
detectors train on), labels/ (one Parquet row per object), gallery/index.html (a panel per
image, or a sample of --gallery N), eigs/ and errors/ as `extract` writes them, and runs/ (one
summary per run, which --config reads back). A rerun skips every image already labelled with
the same settings; --retry-errors runs the failed ones again.
"""

INSTANCES_FILE = "instances.json"
OBJECT_CATEGORY = [{"id": 1, "name": "object", "supercategory": "object"}]


class LabelActor:
    """Ray Data callable: loads the backbone once, labels each batch and commits its shards."""

    def __init__(self, config_json: str, label_json: str, out: str, device: str, batch_size: int, threads: int,
                 run_id: str | None = None, max_worker_deaths: int = 2, head_json: str | None = None):
        # Imported here, in the actor: the driver never loads torch (its memory holds counts).
        from pipeline.batch.labeller import ObjectLabeller

        runner.set_threads(threads)
        self.extract_json, self.label_json, self.out = config_json, label_json, out
        self.run_id, self.max_deaths, self.attempts = run_id, max_worker_deaths, Attempts(out)
        head = Head.from_dict(json.loads(head_json)) if head_json else None
        self.labeller = ObjectLabeller(ExtractConfig.from_dict(json.loads(config_json)),
                                       LabelConfig.from_dict(json.loads(label_json)), out, device, batch_size, head)

    def __call__(self, batch: dict) -> dict:
        from pipeline.batch.labeller import LabelRef

        decoded = runner.decoded_items(batch) or {}  # the decode stage's work, on Ray
        items = [LabelRef(ImageRef(str(i), str(u)), bool(h), str(s), bool(p), decoded.get(str(i))) for i, u, h, s, p in
                 zip(batch["image_id"], batch["uri"], batch["has_row"], batch["features_shard"], batch["panel"])]
        digest = self.labeller.digest
        storage_dtype = self.labeller.extractor.cfg.eigen.storage_dtype

        def label(part: list[LabelRef]) -> dict:
            return dataclasses.asdict(self.labeller(part))

        def shards(result: dict) -> tuple[str, dict]:
            return shard_name(digest, [i.ref.image_id for i in items]), {
                EIGEN_DIR: (eigen_table(result["eigen_rows"], storage_dtype) if result.get("eigen_rows") else None,
                            self.extract_json),
                LABELS_DIR: (object_table(result["objects"]) if result.get("objects") else None, self.label_json),
                ERROR_DIR: (error_table(result["errors"]) if result["errors"] else None, self.label_json),
            }

        return runner.guarded_batch(self, digest, items, label, shards, batch.get(runner.DEFER_COMMIT, False))


def gallery_ids(refs: list[ImageRef], n: int, seed: int = 0) -> set[str]:
    """All image ids when there are at most n, else a fixed-seed sample of n of them."""
    ids = sorted(r.image_id for r in refs)
    if len(ids) <= n:
        return set(ids)
    return {ids[i] for i in np.random.default_rng(seed).choice(len(ids), n, replace=False)}


def run_label(source: str | None, out: str, cfg: ExtractConfig, label_cfg: LabelConfig, runtime: RuntimeConfig,
              refs: list[ImageRef], local: bool = False, gallery: int = 50, coco_annotations: str | None = None,
              clusters_dir: str | None = None) -> dict:
    """Label every pending image, then write OUT/instances.json and OUT/gallery/index.html;
    prints progress, returns the run summary (also in OUT/runs/)."""
    started, clock = datetime.now(timezone.utc), time.monotonic()
    out = out.rstrip("/")
    digest = label_digest(cfg.digest(), label_cfg)
    check_configs(cfg, label_cfg)

    def run(lease) -> dict:
        todo, skipped = runner.not_done(refs, out, digest, LABELS_DIR, runtime.retry_errors)
        summary = {"source": source, "out": out, "config_digest": digest, "extract_digest": cfg.digest(),
                   "config": cfg.to_dict(), "label_config": label_cfg.to_dict(),
                   "skipped": skipped, "processed": 0, "failed": 0, "errors": []}
        if not todo:
            print(f"nothing to do: all {len(refs)} images already labelled in {out} for config {digest}")
            summary["instances"] = {"uri": f"{out}/{INSTANCES_FILE}"}
            if instances_source(out) != _source(digest, coco_annotations, clusters_dir):
                # OUT's instances.json was written by another config (or is missing): this run's.
                summary["instances"] = write_dataset_instances(out, digest, coco_annotations, clusters_dir)
                print(f"rewrote {summary['instances']['uri']} for config {digest}")
            return summary
        print(f"{len(todo)} images to label, {summary['skipped']} already done for config {digest}")
        head_json = None
        if label_cfg.self_train:
            head, summary["head"] = self_train(out, cfg, label_cfg, digest, runtime, refs, local, lease.owner)
            head_json = json.dumps(head.to_dict())
        rows = shard_files(out, cfg.digest(), EIGEN_DIR)
        panels = gallery_ids(refs, gallery)
        batches = [{**b, "has_row": [i in rows for i in b["image_id"]],
                    "features_shard": [rows.get(i, "") if cfg.store_features else "" for i in b["image_id"]],
                    "panel": [i in panels for i in b["image_id"]]}
                   for b in runner.cut_batches(todo, runtime.batch_size)]
        ran: dict = {}
        outcome = runner.drive(batches, len(todo), LabelActor,
                                {"config_json": cfg.to_json(), "label_json": label_cfg.to_json(), "out": out,
                                 "head_json": head_json},
                                runtime, local, "deep-spectral-label", lease.owner, extract.decode_stage(cfg, out, digest),
                                ran=ran)
        summary["instances"] = write_dataset_instances(out, digest, coco_annotations, clusters_dir)
        summary["gallery"] = write_gallery(out, digest, sorted(panels), run_summary_name(digest, started))
        summary = runner.finish_summary(summary, outcome, started, clock, local, runtime, out, lease, ran)
        print(f"done: {summary['processed']} images labelled, {summary['failed']} failed, "
              f"{summary['seconds']} s ({summary['images_per_second']} images/s); "
              f"{summary['instances']['annotations']} objects in {out}/{INSTANCES_FILE}, "
              f"gallery {summary['gallery']}, run summary {summary['run_file']}")
        runner.print_failures(summary)
        return summary

    return runner.run_leased(out, runtime, run)


def check_configs(cfg: ExtractConfig, label_cfg: LabelConfig) -> None:
    """ValueError where the label config needs what the extraction config leaves out."""
    if label_cfg.self_train and not cfg.store_features:
        raise ValueError("label.self_train: fits its head on stored patch features: needs "
                         "extract.store_features (--store-features)")
    if label_cfg.detector and not cfg.store_features:
        raise ValueError("label.detector: the detector reads the patch features: needs "
                         "extract.store_features (--store-features)")


def self_train(out: str, cfg: ExtractConfig, label_cfg: LabelConfig, digest: str, runtime: RuntimeConfig,
               refs: list[ImageRef], local: bool, run_id: str) -> tuple[Head, dict]:
    """The head of this label digest: OUT's stored one (a rerun), else extract the images
    that have no row yet (ExtractActors), fit on a fixed-seed sample of the stored rows (one
    Ray task, or here with `local`) and store it -> (head, its record for the run summary)."""
    stored = read_head(out, digest)
    if stored is not None:
        print(f"self-training: reusing the head in {head_uri(out, digest)}")
        return stored[0], {**stored[1], "uri": head_uri(out, digest), "fitted": False}
    missing, _ = runner.not_done(refs, out, cfg.digest(), EIGEN_DIR, runtime.retry_errors)
    if missing:
        print(f"self-training: extracting the {len(missing)} images with no stored row first")
        runner.drive(runner.cut_batches(missing, runtime.batch_size), len(missing), extract.ExtractActor,
                     {"config_json": cfg.to_json(), "out": out}, runtime, local, "deep-spectral-extract", run_id,
                     extract.decode_stage(cfg, out))
    rows = shard_files(out, cfg.digest(), EIGEN_DIR)
    ids = head_sample([r.image_id for r in refs if r.image_id in rows], label_cfg)
    print(f"self-training: fitting the head on {len(ids)} stored rows")
    args = (out, cfg.digest(), ids, label_cfg)
    if local:
        head, info = fit_stored_head(*args)
    else:
        import ray

        if not ray.is_initialized():
            ray.init(address=runtime.address or os.environ.get("RAY_ADDRESS") or "local")
        head, info = ray.get(ray.remote(fit_stored_head).options(num_cpus=1, max_retries=3).remote(*args))
    uri = write_head(out, digest, head, info)
    print(f"self-training: head fitted on {info['images']} images in {info['seconds']} s -> {uri}")
    return head, {**info, "label_digest": digest, "uri": uri, "fitted": True}


def object_rows(out: str, digest: str, columns: list[str]) -> Iterator[dict]:
    """Every object row of a label run, a record batch at a time, in a fixed order."""
    for batch in scan_batches(out, LABELS_DIR, columns, config_digest=digest):
        yield from batch.to_pylist()


def cluster_categories(clusters_dir: str):
    """A `deep-spectral cluster` output -> (its categories, object row -> category id): an
    object takes the cluster covering most of its non-background pixels in that image's
    label PNG; one with none gets the extra category "unassigned"."""
    with fsspec.open(f"{clusters_dir.rstrip('/')}/cluster.json") as f:
        n = json.load(f)["config"]["cluster"]["n_clusters"]
    categories = [{"id": c, "name": f"cluster {c - 1}", "supercategory": "object"} for c in range(1, n + 1)]
    categories.append({"id": n + 1, "name": "unassigned", "supercategory": "object"})

    def category_of(row: dict) -> int:
        stem = row["image_id"].rsplit(".", 1)[0]
        with fsspec.open(f"{clusters_dir.rstrip('/')}/labels/{stem}.png", "rb") as f:
            labels = decode_label_png(f.read())
        if labels.shape != (row["height"], row["width"]):
            labels = np.asarray(Image.fromarray(labels).resize((row["width"], row["height"]), Image.NEAREST))
        inside = labels[decode_mask(row["segmentation"], row["height"], row["width"])]
        counts = np.bincount(inside[inside > 0], minlength=n + 1)
        return int(counts.argmax()) if counts.any() else n + 1

    return categories, category_of


def write_dataset_instances(out: str, digest: str, coco_annotations: str | None = None,
                            clusters_dir: str | None = None) -> dict:
    """OUT/labels -> OUT/instances.json, streamed (rows of one image are contiguous: a batch
    commits all of an image's objects in one shard). Image ids: the COCO file's when given.
    Categories: one ("object"), or the clusters of a `cluster` run (`cluster_categories`)."""
    by_name = coco_ids_by_file_name(coco_annotations) if coco_annotations else {}
    categories, category_of = OBJECT_CATEGORY, (lambda row: 1)
    if clusters_dir:
        categories, category_of = cluster_categories(clusters_dir)

    def image_id(name: str) -> int:
        return by_name.get(name) or by_name.get(name.rsplit("/", 1)[-1]) or stable_image_id(name)

    def images() -> Iterator[dict]:
        last = None
        for row in object_rows(out, digest, ["image_id", "height", "width"]):
            if row["image_id"] != last:
                last = row["image_id"]
                yield {"id": image_id(last), "file_name": last, "height": row["height"], "width": row["width"]}

    def annotations() -> Iterator[dict]:
        for n, row in enumerate(object_rows(out, digest, ["image_id", "height", "width", "box", "score", "area",
                                                        "segmentation", "method", "rank"]), start=1):
            x0, y0, x1, y1 = row["box"]
            yield {"id": n, "image_id": image_id(row["image_id"]), "category_id": category_of(row),
                   "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                   "area": row["area"], "iscrowd": 0, "score": round(row["score"], 6),
                   "segmentation": {"size": [row["height"], row["width"]], "counts": row["segmentation"]},
                   "method": row["method"], "rank": row["rank"]}

    info = {"description": "deep-spectral label: class-agnostic objects",
            **_source(digest, coco_annotations, clusters_dir),
            "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    uri = f"{out}/{INSTANCES_FILE}"
    n = write_instances(uri, images(), annotations(), categories, info)
    return {"uri": uri, "annotations": n}


def _source(digest: str, coco_annotations: str | None, clusters_dir: str | None) -> dict:
    """What an instances.json is made from (its `info` says so): the label run's rows, whose
    image ids, and whose categories."""
    return {"config_digest": digest, "image_ids_from": coco_annotations, "categories_from": clusters_dir}


def instances_source(out: str) -> dict | None:
    """The `_source` recorded in OUT/instances.json, or None when there is none. Reads only
    the file's head: write_instances puts `info` first, on the first line."""
    try:
        with fsspec.open(f"{out}/{INSTANCES_FILE}", "r") as f:
            head = f.readline()
        info, _ = json.JSONDecoder().raw_decode(head, head.index("{", 1))
    except (FileNotFoundError, ValueError):
        return None
    return {k: info.get(k) for k in ("config_digest", "image_ids_from", "categories_from")}


def write_gallery(out: str, digest: str, ids: list[str], run_file: str | None = None) -> str:
    """OUT/gallery/index.html over the panels that exist for `ids`: each one's thumbnail
    (the panel itself where it has none) linked to the panel, captioned with its objects'
    scores from the labels table; links to OUT/instances.json and to the run summary
    `run_file` (a name under OUT/runs/: this run's, which finish_summary writes next)."""
    fs, root = fsspec.core.url_to_fs(f"{out}/{GALLERY_DIR}")
    panels, thumbs = _names(fs, f"{root}/panels"), _names(fs, f"{root}/thumbs")
    ids = [i for i in ids if panel_name(i).split("/", 1)[1] in panels]
    scores: dict[str, list[tuple[int, float]]] = {i: [] for i in ids}
    if ids:
        for batch in scan_batches(out, LABELS_DIR, ["image_id", "object", "score"], config_digest=digest,
                                  image_ids=ids):
            for row in batch.to_pylist():
                scores[row["image_id"]].append((row["object"], row["score"]))
    entries = [GalleryEntry(i, panel_name(i), thumb_name(i) if thumb_name(i).split("/", 1)[1] in thumbs else "",
                            scores=tuple(s for _, s in sorted(scores[i]))) for i in ids]
    metrics = {"config_digest": digest, "images in gallery": len(entries),
               "objects in gallery": sum(len(e.scores) for e in entries)}
    links = [("run summary", f"../{RUNS_DIR}/{run_file}")] if run_file else []
    links += [(INSTANCES_FILE, f"../{INSTANCES_FILE}")]
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root}/index.html", "w") as f:
        f.write(gallery_html("deep-spectral label", metrics, entries, links))
    return fs.unstrip_protocol(f"{root}/index.html")


def _names(fs, folder: str) -> set[str]:
    """The file names in `folder` (one listing, not a request per panel); none if it is missing."""
    fs.invalidate_cache(folder)  # actors in other processes wrote there
    try:
        return {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)}
    except FileNotFoundError:
        return set()


LABEL_FLAGS = [
    Flag("label.discovery.max_objects", "most objects per image"),
    Flag("label.refine", "pixel refinement of each object's mask: colour guided filter, TokenCut's bilateral "
         "solver, pymatting closed-form (slow), none", choices=tuple(REFINERS)),
    Flag("label.detector", "a detector from `deep-spectral train` (its output folder): its detections, with "
         "masks, become the objects; an image where it finds none keeps its cuts (needs --store-features)",
         metavar="DETECTOR"),
    Flag("label.self_train", "fit a logistic head on the objects of a sample of stored rows and take its mask "
         "as each image's first object (needs --store-features)"),
]
OPTIONS = Options({"extract": ExtractConfig, "label": LabelConfig, "runtime": RuntimeConfig},
                  extract.EXTRACT_FLAGS + LABEL_FLAGS + extract.RUNTIME_FLAGS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    extract.add_source_options(parser)
    parser.add_argument("--out", required=True, help="output folder or fsspec URL")
    parser.add_argument("--gallery", type=int, default=50, help="panels: every image up to N, else a sample of N")
    parser.add_argument("--categories", default=None, metavar="CLUSTER_OUT",
                        help="categories of instances.json from a `deep-spectral cluster` output folder "
                             "(the cluster covering most of each object); default one class-agnostic category")
    extract.add_running_options(parser)
    OPTIONS.add_to(parser)


def configs_from_args(args: argparse.Namespace, options: Options = OPTIONS) -> dict:
    """The run's typed configs from --config, flags and --set; a bad value, or settings that do
    not fit together, exit (status 2, one line) before any work."""
    configs = extract.configs_from_args(args, options)
    try:
        check_configs(configs["extract"], configs["label"])
        if configs["label"].detector:  # the round folder itself, whose path names its digest
            configs["label"] = dataclasses.replace(configs["label"], detector=resolve_detector(configs["label"].detector))
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    return configs


def main(args: argparse.Namespace) -> int:
    configs = configs_from_args(args)
    cfg, label_cfg, runtime = configs["extract"], configs["label"], configs["runtime"]
    if args.dry_run:
        return dry_run(configs, {"extract": cfg.digest(), "label": label_digest(cfg.digest(), label_cfg)})
    try:
        source, refs = extract.images_from_args(args)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    coco = args.annotations if args.dataset == "coco" else None
    summary = run_label(source, args.out, cfg, label_cfg, runtime, refs,
                        local=args.local, gallery=args.gallery, coco_annotations=coco, clusters_dir=args.categories)
    write_summary(args.summary, summary)
    return runner.exit_status(summary)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m jobs.label", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
