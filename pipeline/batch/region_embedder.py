"""Region re-embedding as a callable: shard rows in, region rows and error rows out
(pipeline.semantic.region_crops; the rows of pipeline.io.schema.REGION_SCHEMA).

Loads the crops' embedder once (`__init__`) and maps batches of shard rows (`__call__`), the
shape of Ray's batch inference, without knowing Ray. Each row's segments take their classes
under the first clustering (consolidated as the labels are), each class's cells make one
region, and the region's box is cropped from the source image and embedded; every image
yields its region rows (one row with label 0 when it has no foreground) or one error row.
"""
from __future__ import annotations

import numpy as np

from pipeline.features.geometry import geometry_of
from pipeline.features.supervised import segment_embedder
from pipeline.io.images import extracted_image
from pipeline.io.schema import exception_error_row, segments_of
from pipeline.semantic.clustering import SegmentClusters
from pipeline.semantic.image_clusters import image_regions
from pipeline.semantic.labelling import ROW_COLUMNS, PseudoLabelConfig, segment_areas, segment_classes
from pipeline.semantic.region_crops import image_regions_of, region_features
from pipeline.semantic.segments import segment_crops


class RegionEmbedder:
    # The shard columns __call__ reads (segments, geometry, the source and its checksum).
    ROW_COLUMNS = ROW_COLUMNS + ["image_sha256"]

    def __init__(self, model: SegmentClusters, cfg: PseudoLabelConfig, long_side: int | None,
                 extract_digest: str, device: str = "cpu", embedder=None):
        """model: the first clustering (pipeline.semantic.labelling.fit_label_clusters);
        cfg: its labelling config, with region_crops set; long_side: the extraction's;
        embedder: anything with cls_embeddings(crops, resize=) (default: cfg.region_crops.backbone's)."""
        if cfg.region_crops is None:
            raise ValueError("RegionEmbedder needs a labelling config with region_crops")
        self.model, self.cfg, self.long_side = model, cfg, long_side
        self.crops = cfg.region_crops
        self.extract_digest = extract_digest
        self.digest = cfg.regions_digest(extract_digest)
        self.embedder = embedder if embedder is not None else segment_embedder(self.crops.backbone, device)

    def __call__(self, rows: list[dict]) -> tuple[list[dict], list[dict]]:
        """Shard rows with segments (at least ROW_COLUMNS; image_sha256 checks the source is the
        image that was extracted) -> (region rows, error rows)."""
        prepared, errors = [], []
        for row in rows:
            try:
                prepared.append((row, *self._regions(row)))
            except Exception as exc:
                errors.append(self.error_row(row, exc))
        crops = [c for _, _, _, _, _, row_crops in prepared for c in row_crops]
        try:  # one call for the batch's crops: a GPU embedder sees a batch, not one image's two
            embedded = self._embed(crops)
        except Exception:
            embedded = None
        out, start = [], 0
        for row, labels, cells, boxes, pooled, row_crops in prepared:
            try:
                if embedded is not None:
                    crop_features = embedded[start:start + len(row_crops)]
                else:  # the batch's call failed: the exception lands on the image that caused it
                    crop_features = self._embed(row_crops)
                out += self._region_rows(row, labels, cells, boxes,
                                         region_features(crop_features, pooled, self.crops.features))
            except Exception as exc:
                errors.append(self.error_row(row, exc))
            start += len(row_crops)
        return out, errors

    def _regions(self, row: dict):
        """-> (labels (r,), cells (r,), boxes (r, 4), pooled segment features (r, D), r crops)."""
        segment_map, _, features = segments_of(row)
        classes = segment_classes(segment_map, features, self.model, self.cfg.min_cluster_share)
        labels, cells, boxes = image_regions_of(segment_map, classes, geometry_of(row, self.long_side))
        if not len(labels):
            return labels, cells, boxes, np.zeros((0, features.shape[1]), np.float32), []
        pooled = image_regions(features, segment_areas(segment_map, len(features)), classes)
        return labels, cells, boxes, pooled, segment_crops(extracted_image(row), boxes, self.crops.crop_size)

    def _embed(self, crops: list[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, 0), np.float32)
        return np.asarray(self.embedder.cls_embeddings(crops, resize="crop"), np.float32)

    def _region_rows(self, row: dict, labels, cells, boxes, features: np.ndarray) -> list[dict]:
        base = {"image_id": row["image_id"], "config_digest": self.digest, "extract_digest": self.extract_digest}
        if not len(labels):  # done, nothing to embed: a rerun must not do it again
            return [{**base, "label": 0, "cells": 0, "box": None, "feature_dim": None, "feature": None}]
        return [{**base, "label": int(label), "cells": int(n), "box": box.tolist(),
                 "feature_dim": features.shape[1], "feature": f.tolist()}
                for label, n, box, f in zip(labels, cells, boxes, features)]

    def error_row(self, row: dict, exc: BaseException) -> dict:
        return exception_error_row(row, self.digest, "regions", exc)
