"""The region re-embedding stage of `cluster --region-crops NAME` and `evaluate semantic
--region-crops NAME`, between the first clustering and the labels (pipeline.semantic.region_crops).

    run_region_crops(shards, extract_digest, out, model, cfg, runtime, local)   -> run summary

The driver lists the images with segments in SHARDS and the shard that holds each one's row,
drops those OUT already holds for this run's regions digest, and maps the rest through
`RegionActor`s (one per GPU where the cluster has GPUs, else CPU actors) that read their rows,
crop and embed each image's regions and commit

    OUT/regions/part-*.parquet         one row per region (pipeline.io.schema.REGION_SCHEMA)
    OUT/region_errors/part-*.parquet   one row per image whose regions could not be embedded

with the extraction's batch rules (jobs.extract.guarded_batch): a batch's shards commit whole, a
rerun does only what is missing, a poison image becomes an error row. The final task then
clusters the regions (pipeline.semantic.labelling.fit_region_classes).
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from jobs import extract
from pipeline.config import RuntimeConfig
from pipeline.io.attempts import Attempts
from pipeline.io.schema import error_table, region_table
from pipeline.io.shards import REGION_DIR, REGION_ERROR_DIR, commit_tables, rows_by_id, shard_files, shard_name
from pipeline.io.sources import ImageRef
from pipeline.semantic.clustering import SegmentClusters
from pipeline.semantic.labelling import PseudoLabelConfig


class RegionActor:
    """Ray Data callable: loads the crops' embedder once, embeds each batch's regions and commits
    its shards. A batch is jobs.extract.cut_batches' {"image_id": [...], "uri": [...]}, each uri
    the shard that holds the image's row."""

    def __init__(self, model: SegmentClusters, labels_cfg: PseudoLabelConfig, long_side: int | None,
                 extract_digest: str, out: str, device: str, batch_size: int, threads: int,
                 run_id: str | None = None, max_worker_deaths: int = 2):
        # Imported here, in the actor: the driver never loads torch.
        from pipeline.batch.region_embedder import RegionEmbedder

        extract.set_threads(threads)
        self.embedder = RegionEmbedder(model, labels_cfg, long_side, extract_digest, device=device)
        self.config_json = labels_cfg_json(labels_cfg, extract_digest)
        self.out, self.run_id, self.max_deaths, self.attempts = out, run_id, max_worker_deaths, Attempts(out)

    def __call__(self, batch: dict) -> dict:
        refs = [ImageRef(str(i), str(s)) for i, s in zip(batch["image_id"], batch["uri"])]
        digest = self.embedder.digest

        def embed(part: list[ImageRef]) -> dict:
            found = rows_by_id([(r.image_id, r.uri) for r in part], self.embedder.extract_digest,
                               self.embedder.ROW_COLUMNS)
            regions, errors = self.embedder([found[r.image_id] for r in part if r.image_id in found])
            errors += [self.embedder.error_row({"image_id": r.image_id, "source_uri": r.uri},
                                               LookupError(f"no row of config {self.embedder.extract_digest} in {r.uri}"))
                       for r in part if r.image_id not in found]
            return {"regions": regions, "errors": errors}

        def commit(result: dict) -> None:
            commit_tables(self.out, shard_name(digest, [r.image_id for r in refs]), {
                REGION_DIR: (region_table(result["regions"]) if result.get("regions") else None, self.config_json),
                REGION_ERROR_DIR: (error_table(result["errors"]) if result["errors"] else None, self.config_json)})

        return extract.guarded_batch(self, digest, refs, embed, commit)


def labels_cfg_json(cfg: PseudoLabelConfig, extract_digest: str) -> str:
    """What the region shards record as their configuration."""
    return json.dumps({"labels": cfg.to_dict(), "extract_digest": extract_digest,
                       "regions_digest": cfg.regions_digest(extract_digest)}, sort_keys=True)


def run_region_crops(shards: str, extract_digest: str, out: str, model: SegmentClusters, cfg: PseudoLabelConfig,
                     long_side: int | None, runtime: RuntimeConfig, local: bool,
                     image_ids: list[str] | None = None) -> dict:
    """Embed the regions of every image with segments in SHARDS (or only `image_ids`) that OUT
    does not hold yet for cfg.regions_digest(extract_digest) -> the run summary (counts; also
    OUT/runs/ when there was work)."""
    started, clock = datetime.now(timezone.utc), time.monotonic()
    digest = cfg.regions_digest(extract_digest)

    def run(lease) -> dict:
        shard_of = shard_files(shards, extract_digest)
        wanted = sorted(shard_of) if image_ids is None else [i for i in image_ids if i in shard_of]
        # Each ref's uri is the shard holding the image's row; a batch then reads few shards.
        refs = sorted((ImageRef(i, shard_of[i]) for i in wanted), key=lambda r: (r.uri, r.image_id))
        todo, skipped = extract.not_done(refs, out, digest, REGION_DIR, runtime.retry_errors, REGION_ERROR_DIR)
        summary = {"out": out, "config_digest": digest, "extract_digest": extract_digest,
                   "skipped": skipped, "processed": 0, "failed": 0, "errors": []}
        if not todo:
            print(f"region crops: all {skipped} images already in {out} for regions {digest}")
            return summary
        print(f"region crops: {len(todo)} images to embed ({cfg.region_crops.backbone}), {skipped} already done")
        outcome = extract.drive(extract.cut_batches(todo, runtime.batch_size), len(todo), RegionActor,
                                {"model": model, "labels_cfg": cfg, "long_side": long_side,
                                 "extract_digest": extract_digest, "out": out},
                                runtime, local, "deep-spectral-region-crops", lease.owner)
        summary = extract.finish_summary(summary, outcome, started, clock, local, runtime, out, lease)
        print(f"region crops: {summary['processed']} images embedded, {summary['failed']} failed, "
              f"{summary['seconds']} s; regions in {out}/{REGION_DIR}")
        return summary

    return extract.run_leased(out, runtime, run)
