"""Stream a label run's stored patch features and its objects to the detector, memory flat in the
dataset size: a shard's rows at a time (read once per epoch), shuffled within a buffer of a few
shards (as Ray Data's local shuffle), in a seeded order. The objects per image (boxes and RLE
strings, a few hundred bytes an object) are the one thing held for the whole set.
"""
from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch

from pipeline.detection.samples import cell_size, training_target
from pipeline.detection.train import Sample
from pipeline.io.schema import list_rows
from pipeline.io.shards import tables_by_id

ROW_COLUMNS = ["image_id", "height", "width", "input_height", "input_width", "grid_h", "grid_w", "feature_dim"]


def shard_groups(shards: dict[str, str]) -> list[tuple[str, list[str]]]:
    """{image_id: shard URI} -> [(shard URI, its image ids)], sorted (a fixed order to shuffle from)."""
    groups: dict[str, list[str]] = {}
    for image_id, uri in shards.items():
        groups.setdefault(uri, []).append(image_id)
    return sorted((uri, sorted(ids)) for uri, ids in groups.items())


def feature_rows(groups: list[tuple[str, list[str]]], extract_digest: str) -> Iterator[tuple[dict, np.ndarray]]:
    """(row without features, features (grid_h, grid_w, feature_dim) float32 NumPy) per image, a
    shard at a time (the features read as one array, not as Python lists)."""
    for uri, ids in groups:
        for table in tables_by_id([(i, uri) for i in ids], extract_digest, ROW_COLUMNS + ["features"]):
            features = list_rows(table.column("features"))
            for row, flat in zip(table.select(ROW_COLUMNS).to_pylist(), features):
                if flat is None:
                    raise ValueError(f"{row['image_id']}: shard was written without store_features")
                grid = np.asarray(flat, np.float32).reshape(row["grid_h"], row["grid_w"], row["feature_dim"])
                yield row, grid


def samples(groups, extract_digest: str, objects: dict[str, list[dict]], long_side: int | None) -> Iterator[tuple]:
    """(image id, Sample, cell size) for each image of `groups` that has objects listed (an image
    without any is a sample with no boxes: drop-loss learns nothing false from it)."""
    for row, grid in feature_rows(groups, extract_digest):
        features = torch.from_numpy(np.ascontiguousarray(grid.transpose(2, 0, 1)))
        yield row["image_id"], (features, training_target(row, objects.get(row["image_id"], []), long_side)), \
            cell_size(row)


def epoch_batches(groups, extract_digest: str, objects: dict[str, list[dict]], long_side: int | None,
                  batch_size: int, seed: int, epoch: int, buffer_shards: int = 4) -> Iterator[list[Sample]]:
    """One epoch's batches: shards in a seeded order (seed, epoch), samples shuffled within a buffer
    of `buffer_shards` shards."""
    rng = random.Random(f"{seed}:{epoch}")
    order = list(groups)
    rng.shuffle(order)
    batch: list[Sample] = []
    for start in range(0, len(order), buffer_shards):
        buffer = [s for _, s, _ in samples(order[start:start + buffer_shards], extract_digest, objects, long_side)]
        rng.shuffle(buffer)
        for sample in buffer:
            batch.append(sample)
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch
