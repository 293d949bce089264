"""The second network's maps read back for the self-training head (pseudo_labels.self_train.backbone):

    head_maps_of(out, self_train_cfg, extract_digest)   its HeadMaps, or None without a backbone
    HeadMaps(out, digest).read(image_ids)    {image_id: (C, h, w) float16 map} from OUT/head_maps
    with_head_maps(rows, maps)               a batch of rows with patch_features -> the same rows,
                                             each one's patch features joined with its map on its grid

The maps are written by jobs.head_maps (pipeline.semantic.head_maps says how they are made).
"""
from __future__ import annotations

import numpy as np

from pipeline.io.schema import list_rows
from pipeline.io.shards import HEAD_MAP_DIR, shard_files, tables_by_id
from pipeline.semantic.head_maps import HeadMapConfig, map_on_grid
from pipeline.semantic.self_training import SelfTrainConfig, joined

MAP_COLUMNS = ["image_id", "map_h", "map_w", "feature_dim", "feature_map"]


class HeadMaps:
    """One run's maps under OUT/head_maps (one digest), read a batch of images at a time."""

    def __init__(self, out: str, digest: str):
        self.digest = digest
        self.shard_of = shard_files(out, digest, HEAD_MAP_DIR)

    def read(self, image_ids: list[str]) -> dict[str, np.ndarray]:
        """-> {image_id: (feature_dim, map_h, map_w) float16} for those with a map, each shard read once."""
        found = {}
        items = [(i, self.shard_of[i]) for i in image_ids if i in self.shard_of]
        for table in tables_by_id(items, self.digest, MAP_COLUMNS):
            maps = list_rows(table.column("feature_map"))
            for i, row in enumerate(table.drop_columns(["feature_map"]).to_pylist()):
                found[row["image_id"]] = maps[i].reshape(row["feature_dim"], row["map_h"], row["map_w"])
        return found


def head_maps_of(out: str, cfg: SelfTrainConfig | None, extract_digest: str) -> HeadMaps | None:
    """The maps a head of `cfg` reads (cfg.backbone's, made by jobs.head_maps), or None."""
    if cfg is None or cfg.backbone is None:
        return None
    return HeadMaps(out, HeadMapConfig(cfg.backbone).digest(extract_digest))


def with_head_maps(rows: list[dict], maps: HeadMaps) -> list[dict]:
    """A batch of rows read with patch_features (labelling.segment_rows) -> the same rows, their
    maps read together, patch_features (grid_h, grid_w, C1) replaced by it joined with the image's
    map on the grid (grid_h, grid_w, C1 + C2; self_training.joined), or None where the image has
    no map."""
    found = maps.read([row["image_id"] for row in rows])
    for row in rows:
        feature_map = found.get(row["image_id"])
        row["patch_features"] = (None if feature_map is None else
                                 joined(row["patch_features"], map_on_grid(feature_map, row["grid_h"], row["grid_w"])))
    return rows
