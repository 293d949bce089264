"""A self-training head's second network as a callable: shard rows in, feature-map rows and error
rows out (pipeline.semantic.head_maps; the rows of pipeline.io.schema.HEAD_MAP_SCHEMA).

Loads the network once (`__init__`) and maps batches of shard rows (`__call__`), the shape of
Ray's batch inference, without knowing Ray. Each image's source (checked against the extracted
one) is cut to the area its cells cover, resized to CELL_PIXELS per cell and run through the
network; its map before the global pooling is the row. A failed image becomes one error row.
"""
from __future__ import annotations

from pipeline.features.geometry import geometry_of
from pipeline.features.supervised import create_embedder
from pipeline.io.images import extracted_image
from pipeline.io.schema import exception_error_row
from pipeline.semantic.head_maps import HeadMapConfig, map_input


class HeadMapEmbedder:
    # The shard columns __call__ reads: the source, its checksum and the grid's geometry.
    ROW_COLUMNS = ["image_id", "source_uri", "image_sha256", "height", "width",
                   "grid_h", "grid_w", "input_height", "input_width"]

    def __init__(self, cfg: HeadMapConfig, long_side: int | None, extract_digest: str,
                 device: str = "cpu", embedder=None):
        """cfg: the maps' config; long_side: the extraction's; embedder: anything with
        feature_maps(images) (default: cfg.backbone's, pipeline.features.supervised)."""
        self.cfg, self.long_side, self.extract_digest = cfg, long_side, extract_digest
        self.digest = cfg.digest(extract_digest)
        self.embedder = embedder if embedder is not None else create_embedder(cfg.backbone, device)

    def __call__(self, rows: list[dict]) -> tuple[list[dict], list[dict]]:
        """Shard rows (at least ROW_COLUMNS) -> (map rows, error rows); feature_map is a
        (feature_dim, map_h, map_w) float array."""
        out, errors = [], []
        for row in rows:
            try:
                image = map_input(extracted_image(row), geometry_of(row, self.long_side), self.cfg.cell_pixels)
                feature_map = self.embedder.feature_maps([image])[0]
                c, h, w = feature_map.shape
                out.append({"image_id": row["image_id"], "map_h": h, "map_w": w, "feature_dim": c,
                            "feature_map": feature_map, "config_digest": self.digest,
                            "extract_digest": self.extract_digest})
            except Exception as exc:
                errors.append(self.error_row(row, exc))
        return out, errors

    def error_row(self, row: dict, exc: BaseException) -> dict:
        return exception_error_row(row, self.digest, "head_maps", exc)
