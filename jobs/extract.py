"""Extraction job: images -> eigenvector shards, on local Ray or a cluster.

    python -m jobs.extract SOURCE --out OUT                    # starts a local Ray
    ray job submit --working-dir . -- python -m jobs.extract SOURCE --out OUT

The driver lists SOURCE, drops what OUT already holds for this configuration, and maps the
rest through `ExtractActor`s (one per GPU, or CPU actors) that write their own shards.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from pipeline.config import (BackboneConfig, EigenConfig, ExtractConfig, GraphConfig, RuntimeConfig,
                             SegmentsConfig)
from pipeline.schema import eigen_table, error_table
from pipeline.shards import EIGEN_DIR, ERROR_DIR, finished_ids, write_shard
from pipeline.sources import ImageRef, list_images


class ExtractActor:
    """Ray Data callable: loads the backbone once, extracts and commits a shard per batch."""

    def __init__(self, config_json: str, out: str, device: str, batch_size: int, threads: int):
        import threadpoolctl
        import torch

        from pipeline.extractor import SpectralExtractor

        # Ray pins OMP_NUM_THREADS=1 in workers; give each actor its share of the cores instead.
        torch.set_num_threads(threads)
        threadpoolctl.threadpool_limits(threads)
        self.cfg = ExtractConfig.from_dict(json.loads(config_json))
        self.out = out
        self.extractor = SpectralExtractor(self.cfg, device=device, batch_size=batch_size)

    def __call__(self, batch: dict) -> dict:
        refs = [ImageRef(str(i), str(u)) for i, u in zip(batch["image_id"], batch["uri"])]
        rows, errors = self.extractor(refs)
        config_json = self.extractor.config_json
        if rows:
            write_shard(eigen_table(rows, self.cfg.eigen.storage_dtype), self.out, EIGEN_DIR, config_json)
        if errors:
            write_shard(error_table(errors), self.out, ERROR_DIR, config_json)
        failed = {e["image_id"]: f"{e['stage']}: {e['reason']}" for e in errors}
        return {
            "image_id": [r.image_id for r in refs],
            "ok": [r.image_id not in failed for r in refs],
            "reason": [failed.get(r.image_id, "") for r in refs],
        }


def pending_images(source: str | None, out: str, cfg: ExtractConfig, retry_errors: bool,
                   refs: list[ImageRef] | None = None) -> tuple[list[ImageRef], int]:
    """(images still to do, number already done or failed) for this configuration; `refs`
    replaces listing SOURCE (an evaluation's benchmark images)."""
    refs = list_images(source) if refs is None else refs
    digest = cfg.digest()
    done = finished_ids(out, digest, EIGEN_DIR)
    if not retry_errors:
        done |= finished_ids(out, digest, ERROR_DIR)
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


def _run_in_process(todo: list[ImageRef], out: str, cfg: ExtractConfig, runtime: RuntimeConfig) -> list[dict]:
    """The actors' work without Ray: one ExtractActor in this process, batch by batch.

    One core is left free, as on Ray: OpenBLAS threads spin-wait, and on a busy 2-core
    machine two of them made the graph and eigensolve ~9x slower than one (1.38 vs 0.15 s per
    ECSSD image at 448 px)."""
    device = runtime.device if runtime.device != "auto" else "cpu"
    threads = max(1, (os.cpu_count() or 1) - 1)
    actor = ExtractActor(cfg.to_json(), out, device, runtime.batch_size, threads)
    results = []
    for s in range(0, len(todo), runtime.batch_size):
        batch = todo[s:s + runtime.batch_size]
        done = actor({"image_id": [r.image_id for r in batch], "uri": [r.uri for r in batch]})
        results += [dict(zip(done, values)) for values in zip(*done.values())]
    return results


def run_extract(source: str | None, out: str, cfg: ExtractConfig, runtime: RuntimeConfig,
                refs: list[ImageRef] | None = None, local: bool = False) -> dict:
    """Process every pending image; returns a summary (also printed).

    refs: the images to do instead of listing SOURCE. local: run the same ExtractActor in
    this process instead of on Ray (no cluster; one model on all cores).
    """
    started = time.time()
    todo, skipped = pending_images(source, out, cfg, runtime.retry_errors, refs)
    summary = {"source": source, "out": out, "config_digest": cfg.digest(), "config": cfg.to_dict(),
               "skipped": skipped, "processed": 0, "failed": 0, "errors": []}
    if not todo:
        print(f"nothing to do: all {skipped} images already in {out} for config {cfg.digest()}")
        return summary
    if local:
        print(f"extracting {len(todo)} images ({skipped} already done) in this process")
        results = _run_in_process(todo, out, cfg, runtime)
    else:
        results = _run_on_ray(todo, skipped, out, cfg, runtime)
    failed = [r for r in results if not r["ok"]]
    summary.update(processed=len(results) - len(failed), failed=len(failed),
                   errors=[{"image_id": r["image_id"], "reason": r["reason"]} for r in failed],
                   seconds=round(time.time() - started, 2))
    print(f"done: {summary['processed']} images written, {summary['failed']} failed, "
          f"{summary['seconds']} s; shards in {out}/{EIGEN_DIR}, errors in {out}/{ERROR_DIR}")
    for err in summary["errors"]:
        print(f"  failed {err['image_id']}: {err['reason']}")
    return summary


def _run_on_ray(todo: list[ImageRef], skipped: int, out: str, cfg: ExtractConfig,
                runtime: RuntimeConfig) -> list[dict]:
    """ExtractActors on Ray Data -> one {"image_id", "ok", "reason"} record per image."""
    import ray

    if not ray.is_initialized():
        # Never join whatever cluster a stale /tmp/ray file points at: RAY_ADDRESS (set by
        # `ray job submit`) or --address choose a cluster, else a fresh local Ray starts.
        ray.init(address=runtime.address or os.environ.get("RAY_ADDRESS") or "local")
    device, n_actors, resources, threads = _placement(runtime, ray.cluster_resources())
    print(f"extracting {len(todo)} images ({skipped} already done) with {n_actors} {device} actor(s)")
    import ray.data

    items = ray.data.from_items([{"image_id": r.image_id, "uri": r.uri} for r in todo])
    results = items.map_batches(
        ExtractActor,
        fn_constructor_kwargs={"config_json": cfg.to_json(), "out": out, "device": device,
                               "batch_size": runtime.batch_size, "threads": threads},
        batch_size=runtime.batch_size,
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        **resources,
    ).take_all()
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="folder, glob, list file (.txt) or fsspec URL of images")
    parser.add_argument("--out", required=True, help="output folder or fsspec URL")
    add_extract_options(parser)
    parser.add_argument("--summary", default=None, help="write the run summary JSON here")


def add_extract_options(parser: argparse.ArgumentParser) -> None:
    """Every option of ExtractConfig and RuntimeConfig (shared with `evaluate`)."""
    d, g, e = BackboneConfig(), GraphConfig(), EigenConfig()
    parser.add_argument("--backbone", default=d.name)
    parser.add_argument("--weights", default=None, help="local path or fsspec URL of weights (default: registry)")
    parser.add_argument("--features", choices=["keys", "tokens"], default=None,
                        help="patch features (default: the backbone's measured default)")
    parser.add_argument("--long-side", type=int, default=d.long_side,
                        help="resize the long side to this many px; 0 = native size cropped to the patch grid")
    parser.add_argument("--k", type=int, default=e.k, help="number of eigenvectors")
    parser.add_argument("--lambda-knn", type=float, default=g.knn_lambda, help="weight of the KNN colour graph")
    parser.add_argument("--knn-scale", choices=["relative", "absolute"], default=g.knn_scale)
    parser.add_argument("--sparsify-topk", type=int, default=None, help="keep each node's top-k affinities")
    parser.add_argument("--upsample", type=int, default=g.upsample, help="feature-grid upsampling factor")
    parser.add_argument("--eigensolver", default=e.method)
    parser.add_argument("--float16", action="store_true", help="store eigenvectors as float16")
    parser.add_argument("--store-features", action="store_true", help="also store the patch features")
    sg = SegmentsConfig()
    parser.add_argument("--segments", type=int, default=sg.n_segments,
                        help="k-means segments per image for semantic segmentation (0 = none; paper: 15)")
    parser.add_argument("--segment-eigenvectors", type=int, default=sg.n_eigenvectors,
                        help="eigenvectors 1..m that the per-image k-means clusters")
    parser.add_argument("--segment-features", choices=["crop", "pool"], default=sg.features,
                        help="crop: re-embed each segment's box crop (CLS); pool: mean patch feature")
    parser.add_argument("--segment-background", choices=["fiedler", "border"], default=sg.background,
                        help="background segments: the Fiedler vector's background side, or only "
                             "the segment covering most of the border (the reference)")
    parser.add_argument("--segment-seed", type=int, default=sg.seed)
    parser.add_argument("--batch-size", type=int, default=RuntimeConfig.batch_size)
    parser.add_argument("--num-actors", type=int, default=None)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--retry-errors", action="store_true", help="retry images recorded as failed")
    parser.add_argument("--address", default=None,
                        help="Ray address (default: RAY_ADDRESS, else a new local Ray; 'auto' joins "
                             "a cluster started with `ray start` on this machine)")


def configs_from_args(args: argparse.Namespace) -> tuple[ExtractConfig, RuntimeConfig]:
    cfg = ExtractConfig(
        backbone=BackboneConfig(name=args.backbone, weights=args.weights, features=args.features,
                                long_side=args.long_side or None),
        graph=GraphConfig(knn_lambda=args.lambda_knn, knn_scale=args.knn_scale,
                          sparsify_topk=args.sparsify_topk, upsample=args.upsample),
        eigen=EigenConfig(k=args.k, method=args.eigensolver,
                          storage_dtype="float16" if args.float16 else "float32"),
        segments=SegmentsConfig(n_segments=args.segments, n_eigenvectors=args.segment_eigenvectors,
                                features=args.segment_features, background=args.segment_background,
                                seed=args.segment_seed),
        store_features=args.store_features,
    )
    runtime = RuntimeConfig(batch_size=args.batch_size, num_actors=args.num_actors,
                            device=args.device, retry_errors=args.retry_errors, address=args.address)
    return cfg, runtime


def main(args: argparse.Namespace) -> int:
    cfg, runtime = configs_from_args(args)
    summary = run_extract(args.source, args.out, cfg, runtime)
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m jobs.extract", description=__doc__)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
