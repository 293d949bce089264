"""Write shards atomically and find what a previous run already finished.

Layout under an output URI (local path or any fsspec URL):

    OUT/eigs/part-<hash>.parquet     one row per image (pipeline.schema.EIGEN_SCHEMA)
    OUT/errors/part-<hash>.parquet   one row per failed image (ERROR_SCHEMA)

A shard is written to `_tmp-...` and renamed into place, so a reader sees it whole or not at
all (pyarrow skips `_`-prefixed files). Its name hashes the config digest and the image ids it
holds, so a retried batch overwrites its own shard instead of duplicating rows.
"""
from __future__ import annotations

import hashlib
import uuid

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.schema import CONFIG_METADATA_KEY

EIGEN_DIR = "eigs"
ERROR_DIR = "errors"


def shard_name(config_digest: str, image_ids: list[str]) -> str:
    h = hashlib.sha256(config_digest.encode())
    for image_id in sorted(image_ids):
        h.update(b"\0" + image_id.encode())
    return f"part-{h.hexdigest()[:20]}.parquet"


def write_shard(table: pa.Table, out: str, kind: str, config_json: str) -> str:
    """Commit `table` as one Parquet file under OUT/kind/; returns its URI."""
    fs, root = fsspec.core.url_to_fs(out)
    folder = f"{root.rstrip('/')}/{kind}"
    fs.makedirs(folder, exist_ok=True)
    digest = table.column("config_digest")[0].as_py()
    name = shard_name(digest, table.column("image_id").to_pylist())
    metadata = dict(table.schema.metadata or {})
    metadata[CONFIG_METADATA_KEY] = config_json.encode()
    table = table.replace_schema_metadata(metadata)
    tmp = f"{folder}/_tmp-{uuid.uuid4().hex}-{name}"
    with fs.open(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd")
    fs.mv(tmp, f"{folder}/{name}")
    return fs.unstrip_protocol(f"{folder}/{name}")


def _dataset(out: str, kind: str):
    fs, root = fsspec.core.url_to_fs(out)
    folder = f"{root.rstrip('/')}/{kind}"
    if not fs.exists(folder):
        return None
    return ds.dataset(folder, filesystem=fs, format="parquet")


def read_table(out: str, kind: str = EIGEN_DIR, columns: list[str] | None = None) -> pa.Table | None:
    """Every committed row under OUT/kind, or None when nothing was written yet."""
    dataset = _dataset(out, kind)
    return None if dataset is None else dataset.to_table(columns=columns)


def finished_ids(out: str, config_digest: str, kind: str = EIGEN_DIR) -> set[str]:
    """Image ids already committed under OUT/kind by a run with this config digest."""
    dataset = _dataset(out, kind)
    if dataset is None:
        return set()
    table = dataset.to_table(
        columns=["image_id"], filter=ds.field("config_digest") == config_digest
    )
    return set(table.column("image_id").to_pylist())
