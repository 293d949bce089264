"""The self-training step of a label run: fit the patch head on stored rows, store it in OUT.

    ids = head_sample(stored_ids, label_cfg)             # a fixed-seed sample of the run's rows
    head, info = fit_stored_head(out, extract_digest, ids, label_cfg)
    write_head(out, label_digest, head, info); read_head(out, label_digest)

Targets are each sampled image's Fiedler object as the run's discovery makes it (its threshold,
largest component); images whose cut fell back (no object) are left out. The head is written
once per label digest (OUT/heads/DIGEST.json) and read back by reruns, so every object row of
one digest comes from one head. No Ray here: jobs/label.py runs this as a Ray task.
"""
from __future__ import annotations

import json
import time

import fsspec
import numpy as np

from pipeline.io.schema import eigenvectors_of, features_of
from pipeline.io.shards import EIGEN_DIR, scan_batches
from pipeline.objects.discovery import fiedler_objects
from pipeline.objects.instances import LabelConfig
from pipeline.objects.self_training import Head, fit_head

HEADS_DIR = "heads"


def head_uri(out: str, label_digest: str) -> str:
    return f"{out.rstrip('/')}/{HEADS_DIR}/{label_digest}.json"


def head_sample(image_ids: list[str], cfg: LabelConfig) -> list[str]:
    """Sorted ids -> the fixed-seed sample of at most cfg.head_images of them (all when fewer)."""
    ids = sorted(image_ids)
    if len(ids) <= cfg.head_images:
        return ids
    rng = np.random.default_rng(cfg.head_config().seed)
    return [ids[i] for i in sorted(rng.choice(len(ids), cfg.head_images, replace=False))]


def fit_stored_head(out: str, extract_digest: str, image_ids: list[str], cfg: LabelConfig) -> tuple[Head, dict]:
    """The head fitted to the Fiedler objects of `image_ids`' stored rows (features needed) ->
    (head, {"images": fitted on, "skipped": fell back, "seconds"})."""
    started = time.perf_counter()
    columns = ["image_id", "k", "grid_h", "grid_w", "feature_dim", "eigenvectors", "eigenvalues", "features"]
    feats, targets, skipped = [], [], 0
    for batch in scan_batches(out, EIGEN_DIR, columns, config_digest=extract_digest, batch_rows=32,
                              image_ids=image_ids):
        for row in batch.to_pylist():
            target = fiedler_objects(eigenvectors_of(row), np.asarray(row["eigenvalues"]), None, cfg.discovery)[0]
            if target.fallback:
                skipped += 1
                continue
            feats.append(features_of(row))
            targets.append(target.mask)
    if not feats:
        raise ValueError(f"self-training: none of the {len(image_ids)} sampled rows in {out} has a Fiedler object")
    head = fit_head(feats, targets, cfg.head_config())
    return head, {"images": len(feats), "skipped": skipped, "seconds": round(time.perf_counter() - started, 2)}


def write_head(out: str, label_digest: str, head: Head, info: dict) -> str:
    uri = head_uri(out, label_digest)
    fs, path = fsspec.core.url_to_fs(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(f"{path}.tmp", "w") as f:  # then moved: a reader never sees half a head
        json.dump({"label_digest": label_digest, **info, "head": head.to_dict()}, f)
    fs.mv(f"{path}.tmp", path)
    return uri


def read_head(out: str, label_digest: str) -> tuple[Head, dict] | None:
    """The stored head of this label digest and its record, or None when there is none."""
    try:
        with fsspec.open(head_uri(out, label_digest), "r") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    return Head.from_dict(data.pop("head")), data
