"""The region re-embedding stage of `cluster --region-crops NAME` and `evaluate semantic
--region-crops NAME`, between the first clustering and the labels (pipeline.semantic.region_crops).

    run_region_crops(shards, extract_digest, out, model, cfg, runtime, local)   -> run summary

A per-image stage (jobs.image_stage) keyed by the run's regions digest: `RegionActor`s crop and
embed each image's regions and commit

    OUT/regions/part-*.parquet         one row per region (pipeline.io.schema.REGION_SCHEMA)
    OUT/region_errors/part-*.parquet   one row per image whose regions could not be embedded

The final task then clusters the regions (pipeline.semantic.labelling.fit_region_classes).
"""
from __future__ import annotations

import json

from jobs.image_stage import ImageStageActor, run_image_stage
from pipeline.config import RuntimeConfig
from pipeline.io.schema import region_table
from pipeline.io.shards import REGION_DIR, REGION_ERROR_DIR
from pipeline.semantic.clustering import SegmentClusters
from pipeline.semantic.labelling import PseudoLabelConfig


class RegionActor(ImageStageActor):
    """Loads the crops' embedder once, embeds each batch's regions and commits its shards."""

    kind, error_kind, table = REGION_DIR, REGION_ERROR_DIR, region_table

    def __init__(self, model: SegmentClusters, labels_cfg: PseudoLabelConfig, long_side: int | None,
                 extract_digest: str, out: str, device: str, batch_size: int, threads: int,
                 run_id: str | None = None, max_worker_deaths: int = 2):
        # Imported here, in the actor: the driver never loads torch.
        from pipeline.batch.region_embedder import RegionEmbedder

        self._setup(RegionEmbedder(model, labels_cfg, long_side, extract_digest, device=device),
                    labels_cfg_json(labels_cfg, extract_digest), out, threads, run_id, max_worker_deaths)


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
    return run_image_stage("region crops", shards, extract_digest, out, cfg.regions_digest(extract_digest),
                           RegionActor, {"model": model, "labels_cfg": cfg, "long_side": long_side,
                                         "extract_digest": extract_digest, "out": out},
                           runtime, local, image_ids)
