"""A per-image stage over an extraction's shard rows, run by Ray actors between the final task's
steps (jobs.region_crops, jobs.head_maps): the driver lists the images with segments in SHARDS,
drops those OUT already holds for the stage's digest, and maps the rest through an
`ImageStageActor` subclass (one per GPU where the cluster has GPUs, else CPU actors) that reads
each image's row, maps the rows through its callable and commits

    OUT/<kind>/part-*.parquet         the stage's rows
    OUT/<error kind>/part-*.parquet   one row per image the stage could not process

with the extraction's batch rules (jobs.runner.guarded_batch): a batch's shards commit whole, a
rerun does only what is missing, a poison image becomes an error row.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Callable

import pyarrow as pa

from jobs import runner
from pipeline.config import RuntimeConfig
from pipeline.io.attempts import Attempts
from pipeline.io.schema import error_table
from pipeline.io.shards import rows_by_id, shard_files, shard_name
from pipeline.io.sources import ImageRef


class ImageStageActor:
    """Ray Data callable: a subclass's __init__ loads its callable (`self.mapper`: .digest,
    .extract_digest, .ROW_COLUMNS, .error_row, and rows -> (rows, error rows)) and calls
    `_setup`; each batch is jobs.runner.cut_batches' {"image_id": [...], "uri": [...]}, each
    uri the shard that holds the image's row."""

    kind: str  # OUT/kind holds the rows
    error_kind: str
    table: Callable[[list[dict]], pa.Table]  # rows -> their table

    def _setup(self, mapper, config_json: str, out: str, threads: int, run_id: str | None,
               max_worker_deaths: int) -> None:
        runner.set_threads(threads)
        self.mapper, self.config_json = mapper, config_json
        self.out, self.run_id, self.max_deaths, self.attempts = out, run_id, max_worker_deaths, Attempts(out)

    def __call__(self, batch: dict) -> dict:
        refs = [ImageRef(str(i), str(s)) for i, s in zip(batch["image_id"], batch["uri"])]
        mapper = self.mapper

        def process(part: list[ImageRef]) -> dict:
            found = rows_by_id([(r.image_id, r.uri) for r in part], mapper.extract_digest, mapper.ROW_COLUMNS)
            rows, errors = mapper([found[r.image_id] for r in part if r.image_id in found])
            errors += [mapper.error_row({"image_id": r.image_id, "source_uri": r.uri},
                                        LookupError(f"no row of config {mapper.extract_digest} in {r.uri}"))
                       for r in part if r.image_id not in found]
            return {"rows": rows, "errors": errors}

        def shards(result: dict) -> tuple[str, dict]:
            return shard_name(mapper.digest, [r.image_id for r in refs]), {
                self.kind: (type(self).table(result["rows"]) if result.get("rows") else None, self.config_json),
                self.error_kind: (error_table(result["errors"]) if result["errors"] else None, self.config_json)}

        return runner.guarded_batch(self, mapper.digest, refs, process, shards,
                                    batch.get(runner.DEFER_COMMIT, False))


def run_image_stage(what: str, shards: str, extract_digest: str, out: str, digest: str, actor_cls,
                    actor_kwargs: dict, runtime: RuntimeConfig, local: bool,
                    image_ids: list[str] | None = None) -> dict:
    """Run `actor_cls` over every image with segments in SHARDS (or only `image_ids`) that
    OUT does not hold yet under actor_cls.kind for `digest` -> the run summary (counts; also
    OUT/runs/ when there was work). `what` names the stage in messages and Ray."""
    started, clock = datetime.now(timezone.utc), time.monotonic()

    def run(lease) -> dict:
        shard_of = shard_files(shards, extract_digest)
        wanted = sorted(shard_of) if image_ids is None else [i for i in image_ids if i in shard_of]
        # Each ref's uri is the shard holding the image's row. Batches are cut in image-id order,
        # not shard order: a batch's images are embedded together (a network's batch rounds an
        # image with the others in it), so the batches, and the stage's outputs, are the same
        # however an extraction cut its shards.
        refs = sorted((ImageRef(i, shard_of[i]) for i in wanted), key=lambda r: r.image_id)
        todo, skipped = runner.not_done(refs, out, digest, actor_cls.kind, runtime.retry_errors,
                                         actor_cls.error_kind)
        summary = {"out": out, "config_digest": digest, "extract_digest": extract_digest,
                   "skipped": skipped, "processed": 0, "failed": 0, "errors": []}
        if not todo:
            print(f"{what}: all {skipped} images already in {out} for {digest}")
            return summary
        print(f"{what}: {len(todo)} images to embed, {skipped} already done")
        ran: dict = {}
        outcome = runner.drive(runner.cut_batches(todo, runtime.batch_size), len(todo), actor_cls,
                                actor_kwargs, runtime, local, "deep-spectral-" + what.replace(" ", "-"),
                                lease.owner, ran=ran)
        summary = runner.finish_summary(summary, outcome, started, clock, local, runtime, out, lease, ran)
        print(f"{what}: {summary['processed']} images embedded, {summary['failed']} failed, "
              f"{summary['seconds']} s; in {out}/{actor_cls.kind}")
        return summary

    return runner.run_leased(out, runtime, run)
