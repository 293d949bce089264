"""The second network's maps (`--set pseudo_labels.self_train.backbone=NAME`; pipeline.semantic.head_maps),
made before the head trains, once per extraction whatever the seed.

    run_head_maps(shards, extract_digest, out, cfg, long_side, runtime, local)   -> run summary
    run_for_head(shards, extract_digest, out, self_train_cfg, ...)   the same where the head asks for maps

A per-image stage (jobs.image_stage) keyed by the maps' digest: `HeadMapActor`s run each image
through the network and commit

    OUT/head_maps/part-*.parquet         one row per image (pipeline.io.schema.HEAD_MAP_SCHEMA)
    OUT/head_map_errors/part-*.parquet   one row per image without a map

The head then reads them next to the stored patch features (pipeline.semantic.labelling.head_rows).
"""
from __future__ import annotations

import dataclasses
import json

from jobs.image_stage import ImageStageActor, run_image_stage
from pipeline.config import RuntimeConfig
from pipeline.io.schema import head_map_table
from pipeline.io.shards import HEAD_MAP_DIR, HEAD_MAP_ERROR_DIR
from pipeline.semantic.head_maps import HeadMapConfig
from pipeline.semantic.self_training import SelfTrainConfig


class HeadMapActor(ImageStageActor):
    """Loads the network once, maps each batch's images and commits its shards."""

    kind, error_kind, table = HEAD_MAP_DIR, HEAD_MAP_ERROR_DIR, head_map_table

    def __init__(self, cfg: HeadMapConfig, long_side: int | None, extract_digest: str, out: str, device: str,
                 batch_size: int, threads: int, run_id: str | None = None, max_worker_deaths: int = 2):
        # Imported here, in the actor: the driver never loads torch.
        from pipeline.batch.head_map_embedder import HeadMapEmbedder

        config_json = json.dumps({"head_maps": dataclasses.asdict(cfg), "extract_digest": extract_digest,
                                  "head_maps_digest": cfg.digest(extract_digest)}, sort_keys=True)
        self._setup(HeadMapEmbedder(cfg, long_side, extract_digest, device=device), config_json, out, threads,
                    run_id, max_worker_deaths)


def run_head_maps(shards: str, extract_digest: str, out: str, cfg: HeadMapConfig, long_side: int | None,
                  runtime: RuntimeConfig, local: bool, image_ids: list[str] | None = None) -> dict:
    """Map every image with segments in SHARDS (or only `image_ids`) that OUT does not hold yet
    for cfg.digest(extract_digest) -> the run summary (counts; also OUT/runs/ when there was work)."""
    return run_image_stage("head maps", shards, extract_digest, out, cfg.digest(extract_digest), HeadMapActor,
                           {"cfg": cfg, "long_side": long_side, "extract_digest": extract_digest, "out": out},
                           runtime, local, image_ids)


def run_for_head(shards: str, extract_digest: str, out: str, cfg: SelfTrainConfig | None, long_side: int | None,
                 runtime: RuntimeConfig, local: bool, image_ids: list[str] | None = None) -> dict | None:
    """run_head_maps for a head whose config names a second network (cfg.backbone), else None."""
    if cfg is None or cfg.backbone is None:
        return None
    return run_head_maps(shards, extract_digest, out, HeadMapConfig(cfg.backbone), long_side, runtime, local,
                         image_ids)
