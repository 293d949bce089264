"""Extraction job: images -> eigenvector shards, on local Ray or a cluster.

    python -m jobs.extract SOURCE --out OUT                    # starts a local Ray
    ray job submit --working-dir . -- python -m jobs.extract SOURCE --out OUT
    python -m jobs.extract --dataset voc --root VOCdevkit/VOC2012 --split Segmentation/val --out OUT
    python -m jobs.extract --dataset coco --root URI --split train2017 --annotations FILE --out OUT
    python -m jobs.extract --dataset coco --root URI/train2014 --image-ids coco_20k_filenames.txt --out OUT

SOURCE is a folder, glob or list file; --dataset reads a dataset's own layout instead
(pipeline/io/dataset_listing.py). The driver lists the images, drops what OUT already holds for
this configuration, and maps the rest through `ExtractActor`s (one per GPU, or CPU actors)
that write their own shards.
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

from pipeline.spectral.affinity import GRAPH_BUILDERS
from pipeline.config import (PATCH_FEATURES, SPARSE_DEFAULT_TOPK, BackboneConfig, EigenConfig, ExtractConfig,
                             GraphConfig, RuntimeConfig, SegmentsConfig, segments_source)
from pipeline.io.schema import eigen_table, error_table
from pipeline.io.progress import Progress
from pipeline.io.runlog import write_run_summary
from pipeline.io.attempts import Attempts, unit_key
from pipeline.io.lease import RunLease, lease_owner
from pipeline.io.shards import EIGEN_DIR, ERROR_DIR, commit_batch, finished_ids, rows_by_id, shard_files
from pipeline.io.sources import ImageRef, list_images
from pipeline.io.storage import with_retries
from pipeline.io.dataset_listing import DATASETS, dataset_images
from pipeline.semantic.segments import segment_features_kind

PROGRESS_EVERY_S = 10.0  # a progress line in the job log at most this often
# Ray Data blocks: one driver-made batch per block up to this many, beyond which consecutive
# batches share a block. Each block is a driver-side object and one actor task: 15,000 blocks
# (COCO train at batch 8) took 36 s in from_items alone on this machine; 1,000 still give
# every actor many tasks.
MAX_BLOCKS = 1000


class ExtractActor:
    """Ray Data callable: loads the backbone once, extracts each batch and commits its shards
    (through `guarded_batch`: poison batches and the run lease)."""

    def __init__(self, config_json: str, out: str, device: str, batch_size: int, threads: int,
                 run_id: str | None = None, max_worker_deaths: int = 2):
        from pipeline.batch.extractor import SpectralExtractor

        set_threads(threads)
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

        def extract(part: list[ImageRef]) -> dict:
            rows, errors = self.extractor([r for r in part if not stored[r.image_id]])
            reused = [r for r in part if stored[r.image_id]]
            if reused:
                found = rows_by_id([(r.image_id, stored[r.image_id]) for r in reused], self.source_digest)
                more, failed = self.extractor.from_stored([(r, found.get(r.image_id)) for r in reused])
                rows, errors = rows + more, errors + failed
            return {"rows": rows, "errors": errors}

        def commit(result: dict) -> None:
            commit_batch(self.out, digest, self.extractor.config_json, [r.image_id for r in refs],
                         eigen_table(result["rows"], self.cfg.eigen.storage_dtype) if result["rows"] else None,
                         error_table(result["errors"]) if result["errors"] else None)

        return guarded_batch(self, digest, refs, extract, commit)


def set_threads(threads: int) -> None:
    """Ray pins OMP_NUM_THREADS=1 in workers; give each actor its share of the cores instead."""
    import threadpoolctl
    import torch

    torch.set_num_threads(threads)
    threadpoolctl.threadpool_limits(threads)


def guarded_batch(actor, digest: str, items: list, process, commit) -> dict:
    """One batch of an actor (with .out, .attempts, .max_deaths, .run_id): process it, commit it,
    and report {"image_id", "ok", "reason"} lists for the driver.

    `items` have `.image_id` and `.uri` (ImageRef) or `.ref` (a ref wrapper); `process(items)`
    returns a dict of lists, "errors" among them; `commit(result)` writes the batch's shards.

    Poison batches: a batch that has lost `max_deaths` worker processes (markers in OUT,
    pipeline.io.attempts) is run one item at a time, and an item that loses as many alone
    becomes an error row (stage "worker") so the rest of the batch is written and the job
    finishes. Resubmits: a batch is committed only while `run_id` holds OUT's run lease
    (pipeline.io.lease), so a dead driver's actors stop writing once a new driver took over.
    Every store access waits out an outage (with_retries) instead of failing the batch, which
    Ray Data would not retry: the job stalls during an outage, then goes on."""
    refs = [getattr(item, "ref", item) for item in items]
    ids = [r.image_id for r in refs]
    key = unit_key(digest, ids)
    lost = len(with_retries(actor.attempts.deaths, key))
    if lost < actor.max_deaths:
        with actor.attempts.attempt(key):
            result = process(items)
    else:
        result = {}
        for item, ref in zip(items, refs):
            one = unit_key(digest, [ref.image_id])
            dead = actor.attempts.deaths(one)
            if len(dead) >= actor.max_deaths:
                part = {"errors": [worker_error(ref, digest, dead, lost)]}
            else:
                with actor.attempts.attempt(one):
                    part = process([item])
            for name, values in part.items():
                result.setdefault(name, []).extend(values)
        result.setdefault("errors", [])
    if actor.run_id is not None and with_retries(lease_owner, actor.out) != actor.run_id:
        # A newer driver owns OUT: it lists and does this batch's images itself.
        return {"image_id": ids, "ok": [False] * len(ids),
                "reason": ["superseded: another driver took over the run lease"] * len(ids)}
    with_retries(commit, result)
    if lost:
        with_retries(actor.attempts.clear, [key] + [unit_key(digest, [i]) for i in ids])
    failed = {e["image_id"]: f"{e['stage']}: {e['reason']}" for e in result["errors"]}
    return {"image_id": ids, "ok": [i not in failed for i in ids], "reason": [failed.get(i, "") for i in ids]}


def worker_error(ref: ImageRef, config_digest: str, dead: list[dict], batch_deaths: int) -> dict:
    """The error row of an image whose worker process died every time it ran alone."""
    where = ", ".join(f"pid {d['pid']} on {d['host']}" for d in dead)
    return {"image_id": ref.image_id, "source_uri": ref.uri, "config_digest": config_digest,
            "stage": "worker", "error_type": "WorkerDied",
            "reason": (f"worker process exited while processing this image alone, {len(dead)} times "
                       f"({where}), after its batch lost {batch_deaths}: killed by a signal or the "
                       f"OOM killer, a crash or exit in native code, or its node lost; the exit "
                       f"status is in the Ray logs of those processes")[:2000]}


def pending_images(source: str | None, out: str, cfg: ExtractConfig, retry_errors: bool,
                   refs: list[ImageRef] | None = None) -> tuple[list[ImageRef], int]:
    """(images still to do, number already done or failed) for this configuration; `refs`
    replaces listing SOURCE (an evaluation's benchmark images)."""
    refs = list_images(source) if refs is None else refs
    return not_done(refs, out, cfg.digest(), EIGEN_DIR, retry_errors)


def not_done(refs: list[ImageRef], out: str, digest: str, kind: str, retry_errors: bool,
             error_kind: str = ERROR_DIR) -> tuple[list[ImageRef], int]:
    """(refs with no row under OUT/kind, nor unless retry_errors an error row under
    OUT/error_kind, for `digest`; how many were skipped)."""
    done = finished_ids(out, digest, kind)
    if not retry_errors:
        done |= finished_ids(out, digest, error_kind)
    todo = [r for r in refs if r.image_id not in done]
    return todo, len(refs) - len(todo)


def _placement(runtime: RuntimeConfig, resources: dict) -> tuple[str, int, dict, int]:
    """(device, number of actors, Ray resources per actor, threads per actor)."""
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    device = runtime.device if runtime.device != "auto" else ("cuda" if gpus else "cpu")
    if device == "cuda":
        n = runtime.num_actors or gpus
        return device, n, {"num_gpus": 1, "num_cpus": 1}, max(1, cpus // max(n, 1))
    # Leave a core for Ray Data's own tasks: all cores held by actors deadlocks on 2 cores.
    n = runtime.num_actors or max(1, cpus - 1)
    share = max(1, cpus // n)
    return device, n, {"num_cpus": min(1.0, (cpus - 0.5) / n)}, share


def cut_batches(todo: list[ImageRef], size: int) -> list[dict]:
    """The work, cut into batches on the driver: {"image_id": [...], "uri": [...]} each.

    Batches are fixed here, not by Ray Data, so a batch retried after a worker death holds
    the same images as the first attempt and overwrites the same shards (commit_batch)."""
    return [{"image_id": [r.image_id for r in todo[s:s + size]], "uri": [r.uri for r in todo[s:s + size]]}
            for s in range(0, len(todo), size)]


def _run_in_process(batches: list[dict], actor_cls, actor_kwargs: dict, runtime: RuntimeConfig) -> Iterator[dict]:
    """The actors' work without Ray: one actor in this process, yielding each batch's
    {"image_id", "ok", "reason"} lists as it finishes.

    One core is left free, as on Ray: OpenBLAS threads spin-wait, and on a busy 2-core
    machine two of them made the graph and eigensolve ~9x slower than one (1.38 vs 0.15 s per
    ECSSD image at 448 px)."""
    device = runtime.device if runtime.device != "auto" else "cpu"
    threads = max(1, (os.cpu_count() or 1) - 1)
    print("running in this process (no Ray)")
    actor = actor_cls(**actor_kwargs, device=device, batch_size=runtime.batch_size, threads=threads)
    for batch in batches:
        yield actor(batch)


def run_leased(out: str, runtime: RuntimeConfig, run):
    """`run(lease)` under OUT's run lease: a driver resubmitted while this one (or its actors)
    still runs waits, or takes over once this one's heartbeat is stale."""
    lease = RunLease(out, runtime.lease_heartbeat_s, runtime.lease_stale_s).acquire()
    try:
        return run(lease)
    finally:
        lease.release()


def drive(batches: list[dict], n_images: int, actor_cls, actor_kwargs: dict, runtime: RuntimeConfig,
          local: bool, name: str, run_id: str) -> dict[str, str | None]:
    """Map `batches` through `actor_cls` (on Ray, or in this process) printing progress ->
    {image_id: None when written, else why it failed} (counts are of distinct ids)."""
    kwargs = {**actor_kwargs, "run_id": run_id, "max_worker_deaths": runtime.max_worker_deaths}
    progress = Progress(n_images, every=PROGRESS_EVERY_S)
    results = (_run_in_process(batches, actor_cls, kwargs, runtime) if local
               else _run_on_ray(batches, actor_cls, kwargs, runtime, name))
    outcome: dict[str, str | None] = {}
    for batch in results:
        new = {i: None if ok else reason for i, ok, reason in zip(batch["image_id"], batch["ok"], batch["reason"])
               if i not in outcome}
        outcome.update(new)
        n_failed = sum(reason is not None for reason in new.values())
        line = progress.update(len(new) - n_failed, n_failed)
        if line:
            print(line, flush=True)
    return outcome


def finish_summary(summary: dict, outcome: dict[str, str | None], started: datetime, clock: float,
                   local: bool, runtime: RuntimeConfig, out: str, lease: RunLease) -> dict:
    """Fill a run summary from the outcome and write it to OUT/runs/ (pipeline.io.runlog)."""
    seconds = time.monotonic() - clock
    errors = [{"image_id": i, "reason": r} for i, r in outcome.items() if r is not None]
    summary.update(processed=len(outcome) - len(errors), failed=len(errors), errors=errors,
                   seconds=round(seconds, 2), images_per_second=round(len(outcome) / seconds, 3),
                   started=started.isoformat(timespec="seconds"), mode="in-process" if local else "ray",
                   runtime=dataclasses.asdict(runtime),
                   lease={"owner": lease.owner, "waited_s": round(lease.waited_s, 1), "took_over": lease.took_over})
    summary["run_file"] = write_run_summary(out, summary, started)
    return summary


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
        batches = cut_batches(todo, runtime.batch_size)
        if reuse:
            stored = shard_files(reuse, segments_source(cfg).digest())
            print(f"reusing the rows of {sum(r.image_id in stored for r in todo)} of them from {reuse} "
                  f"(config {segments_source(cfg).digest()})")
            batches = [{**b, "stored": [stored.get(i, "") for i in b["image_id"]]} for b in batches]
            summary["reused_from"] = reuse
        outcome = drive(batches, len(todo), ExtractActor,
                        {"config_json": cfg.to_json(), "out": out}, runtime, local, "deep-spectral-extract",
                        lease.owner)
        summary = finish_summary(summary, outcome, started, clock, local, runtime, out, lease)
        print(f"done: {summary['processed']} images written, {summary['failed']} failed, "
              f"{summary['seconds']} s ({summary['images_per_second']} images/s); shards in {out}/{EIGEN_DIR}, "
              f"errors in {out}/{ERROR_DIR}, run summary {summary['run_file']}")
        for err in summary["errors"]:
            print(f"  failed {err['image_id']}: {err['reason']}")
        return summary

    return run_leased(out, runtime, run)


def _run_on_ray(batches: list[dict], actor_cls, actor_kwargs: dict, runtime: RuntimeConfig,
                name: str) -> Iterator[dict]:
    """Actors of `actor_cls` on Ray Data, one driver-made batch per row; yields each batch's
    {"image_id", "ok", "reason"} lists as it finishes (streaming, in completion order).

    Fault tolerance is Ray Data's default for actor pools (Ray 2.60, actor_pool_map_operator
    `_apply_default_remote_args`): max_restarts=-1 and max_task_retries=-1, so a killed actor
    is restarted (on another node if its node is gone) and its batch re-run. They are not
    passed here because passing remote args to `map` is deprecated in 2.60 (removed in 2.64);
    tests/test_faults.py proves the behaviour on a multi-node cluster."""
    import ray

    if not ray.is_initialized():
        # Never join whatever cluster a stale /tmp/ray file points at: RAY_ADDRESS (set by
        # `ray job submit`) or --address choose a cluster, else a fresh local Ray starts.
        ray.init(address=runtime.address or os.environ.get("RAY_ADDRESS") or "local")
    device, n_actors, resources, threads = _placement(runtime, ray.cluster_resources())
    print(f"Ray: {n_actors} {device} actor(s), {resources}")
    import ray.data

    # An actor that dies in its constructor (its process or node lost while it loads the
    # model) counts against this budget, and Ray Data's default of 0 fails the whole job.
    ray.data.DataContext.get_current().max_consecutive_actor_init_deaths = 3
    items = ray.data.from_items(batches, override_num_blocks=min(len(batches), MAX_BLOCKS))
    items.set_name(name)  # how the run shows in the dashboard's Ray Data view
    results = items.map(
        actor_cls,
        fn_constructor_kwargs={**actor_kwargs, "device": device, "batch_size": runtime.batch_size,
                               "threads": threads},
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        **resources,
    )
    yield from results.iter_rows()


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
                        help="patch features (default: the backbone's measured default); keys+tokens: "
                             "both at unit norm, concatenated (the graph's cosine is their mean)")
    parser.add_argument("--long-side", type=int, default=d.long_side,
                        help="resize the long side to this many px; 0 = native size cropped to the patch grid")
    parser.add_argument("--flip-average", action="store_true",
                        help="average each patch's features with the mirrored image's (2x forward pass)")
    parser.add_argument("--second-long-side", type=int, default=None, metavar="PX",
                        help="average each patch's features with the image's at this long side too, "
                             "resampled onto the --long-side cells (a second forward pass; with "
                             "--flip-average, 4x)")
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
    try:
        cfg = _extract_config(args)
    except ValueError as exc:  # flags that contradict each other
        raise SystemExit(f"error: {exc}") from exc
    runtime = RuntimeConfig(batch_size=args.batch_size, num_actors=args.num_actors,
                            device=args.device, retry_errors=args.retry_errors, address=args.address,
                            max_worker_deaths=args.max_worker_deaths, lease_heartbeat_s=args.lease_heartbeat_s,
                            lease_stale_s=args.lease_stale_s)
    return cfg, runtime


def _segment_features(args: argparse.Namespace) -> str:
    """--segment-features, else the backbone registry's default for segments (crop when a
    segment backbone re-embeds them, or when no segments are made)."""
    if args.segment_features:
        return args.segment_features
    if args.segment_backbone or not args.segments:
        return SegmentsConfig().features
    from pipeline.features.backbones import get_spec  # torch: only when segments are asked for

    return get_spec(args.backbone).segment_features


def _extract_config(args: argparse.Namespace) -> ExtractConfig:
    return ExtractConfig(
        backbone=BackboneConfig(name=args.backbone, weights=args.weights, features=args.features,
                                long_side=args.long_side or None, flip_average=args.flip_average,
                                second_long_side=args.second_long_side),
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
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m jobs.extract", description=__doc__)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
