"""Write shards atomically and find what a previous run already finished.

Layout under an output URI (local path or any fsspec URL):

    OUT/eigs/part-<hash>.parquet     one row per image (pipeline.io.schema.EIGEN_SCHEMA)
    OUT/errors/part-<hash>.parquet   one row per failed image (ERROR_SCHEMA)

A shard is committed whole or not at all (pipeline.io.storage: a local `_tmp-` file renamed into
place, or one PUT of the final key on an object store, which has no rename); readers list only
final names. Its name hashes the config digest and the image ids it
holds, so a retried batch overwrites its own shard instead of duplicating rows.
`commit_batch` names both of a batch's shards after the whole batch, so this holds even when
a retry splits it differently between rows and errors (a transient read error that cleared).
"""
from __future__ import annotations

import hashlib
import json
import io
from typing import Iterator

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.io.schema import CONFIG_METADATA_KEY, EIGEN_SCHEMA, OBJECT_SCHEMA
from pipeline.io.storage import fresh_listing, put_whole

EIGEN_DIR = "eigs"
ERROR_DIR = "errors"
LABELS_DIR = "labels"  # objects of `deep-spectral label` (pipeline.io.schema.OBJECT_SCHEMA)
REGION_DIR = "regions"  # re-embedded regions of `cluster --region-crops` (REGION_SCHEMA)
REGION_ERROR_DIR = "region_errors"  # images whose regions could not be embedded (ERROR_SCHEMA)
HEAD_MAP_DIR = "head_maps"  # a self-training head's second network's maps (HEAD_MAP_SCHEMA)
HEAD_MAP_ERROR_DIR = "head_map_errors"  # images without a map (ERROR_SCHEMA)
MATTES_DIR = "mattes"  # alphas and cut-outs of `deep-spectral matte` (MATTE_SCHEMA)


def shard_name(config_digest: str, image_ids: list[str]) -> str:
    h = hashlib.sha256(config_digest.encode())
    for image_id in sorted(image_ids):
        h.update(b"\0" + image_id.encode())
    return f"part-{h.hexdigest()[:20]}.parquet"


def write_shard(table: pa.Table, out: str, kind: str, config_json: str, name: str | None = None) -> str:
    """Commit `table` as one Parquet file under OUT/kind/ (named after its rows unless `name`
    is given); returns its URI."""
    fs, root = fsspec.core.url_to_fs(out)
    folder = f"{root.rstrip('/')}/{kind}"
    fs.makedirs(folder, exist_ok=True)
    digest = table.column("config_digest")[0].as_py()
    name = name or shard_name(digest, table.column("image_id").to_pylist())
    metadata = dict(table.schema.metadata or {})
    metadata[CONFIG_METADATA_KEY] = config_json.encode()
    table = table.replace_schema_metadata(metadata)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    put_whole(fs, f"{folder}/{name}", buf.getvalue())
    return fs.unstrip_protocol(f"{folder}/{name}")


def commit_batch(out: str, config_digest: str, config_json: str, batch_ids: list[str],
                 eigen: pa.Table | None, errors: pa.Table | None) -> None:
    """Commit one batch's rows and error rows as OUT/eigs/NAME and OUT/errors/NAME, NAME
    hashing the whole batch. A kind with nothing to write loses its shard of an earlier
    attempt, so after any attempt completes each image of the batch is in exactly one table."""
    commit_tables(out, shard_name(config_digest, batch_ids),
                  {EIGEN_DIR: (eigen, config_json), ERROR_DIR: (errors, config_json)})


def commit_tables(out: str, name: str, tables: dict[str, tuple[pa.Table | None, str]]) -> None:
    """Commit OUT/kind/NAME for each kind -> (table, config JSON); a kind whose table is
    None or empty loses its shard of an earlier attempt of the same batch."""
    fs, root = fsspec.core.url_to_fs(out)
    for kind, (table, config_json) in tables.items():
        if table is not None and table.num_rows:
            write_shard(table, out, kind, config_json, name=name)
        elif fs.exists(f"{root.rstrip('/')}/{kind}/{name}"):
            fs.rm(f"{root.rstrip('/')}/{kind}/{name}")


def _dataset(out: str, kind: str):
    fs, root = fsspec.core.url_to_fs(out)
    folder = f"{root.rstrip('/')}/{kind}"
    fresh_listing(fs, folder)
    if not fs.exists(folder):
        return None
    # An explicit sorted file list: scans then visit shards in the same order every run.
    files = sorted(p for p in fs.find(folder) if p.endswith(".parquet")
                   and not p.rsplit("/", 1)[-1].startswith(("_", ".")))
    if not files:
        return None
    schema = _read_schema(fs, files[0], KIND_SCHEMAS[kind]) if kind in KIND_SCHEMAS else None
    return ds.dataset(files, filesystem=fs, format="parquet", schema=schema)


# Kinds whose schema gained columns after shards were written: older shards read them as null.
KIND_SCHEMAS = {LABELS_DIR: OBJECT_SCHEMA, EIGEN_DIR: EIGEN_SCHEMA}


def _read_schema(fs, first_file: str, current: pa.Schema) -> pa.Schema:
    """The first shard's schema (eigen shards: eigenvectors float16 or float32) with the columns
    `current` added since it was written."""
    with fs.open(first_file, "rb") as f:
        schema = pq.read_schema(f)
    for field in current:
        if field.name not in schema.names:
            schema = schema.append(field)
    return schema


KEY_COLUMNS = ["image_id", "config_digest"]
# What one row stands for, where it is more than an image: an object of an image.
KIND_KEYS = {LABELS_DIR: ["image_id", "object", "config_digest"], REGION_DIR: ["image_id", "label", "config_digest"]}


def key_columns(kind: str) -> list[str]:
    return KIND_KEYS.get(kind, KEY_COLUMNS)


def _first_of_each(batch: pa.RecordBatch, seen: set, columns: list[str], keys: list[str]) -> pa.RecordBatch:
    """The rows of `batch` whose key (`keys` columns) is not in `seen` (which it grows),
    restricted to `columns`."""
    keep = []
    for i, key in enumerate(zip(*(batch.column(k).to_pylist() for k in keys))):
        if key not in seen:
            seen.add(key)
            keep.append(i)
    if len(keep) < batch.num_rows:
        batch = batch.take(pa.array(keep, pa.int64()))
    return batch.select(columns)


def scan_batches(out: str, kind: str, columns: list[str], config_digest: str | None = None,
                 batch_rows: int = 1024, image_ids: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream OUT/kind in record batches of at most `batch_rows` rows, in a fixed order,
    holding one batch in memory at a time; optionally only one config's rows, or some images'.

    One row per key (image_id, config_digest; objects: also `object`): shards of two drivers that overlapped (a resubmit
    while the first job's actors still ran) may hold an image twice; the first in shard order
    is kept. The keys seen are the only state that grows (ids, not data)."""
    dataset = _dataset(out, kind)
    if dataset is None:
        return
    filter_ = None
    if config_digest is not None:
        filter_ = ds.field("config_digest") == config_digest
    if image_ids is not None:
        wanted = ds.field("image_id").isin(sorted(image_ids))
        filter_ = wanted if filter_ is None else filter_ & wanted
    if config_digest is not None:
        # Files of other configs are skipped by their row groups' statistics before the scan:
        # the scanner's own filter still decodes their columns (7x slower on an output holding
        # several configs' stored features).
        fragments = [f for f in dataset.get_fragments() if f.subset(filter_).num_row_groups]
        dataset = ds.FileSystemDataset(fragments, dataset.schema, dataset.format, dataset.filesystem)
    keys = key_columns(kind)
    read = columns + [c for c in keys if c not in columns]
    seen: set = set()
    for batch in dataset.to_batches(columns=read, filter=filter_, batch_size=batch_rows, use_threads=False):
        batch = _first_of_each(batch, seen, columns, keys)
        if batch.num_rows:
            yield batch


def read_table(out: str, kind: str = EIGEN_DIR, columns: list[str] | None = None) -> pa.Table | None:
    """Every committed row under OUT/kind, one per (image_id, config_digest) as in
    `scan_batches`, or None when nothing was written yet."""
    dataset = _dataset(out, kind)
    if dataset is None:
        return None
    columns = columns or dataset.schema.names
    batches = list(scan_batches(out, kind, columns))
    return pa.Table.from_batches(batches) if batches else dataset.to_table(columns=columns).slice(0, 0)


def raw_row_count(out: str, kind: str = EIGEN_DIR) -> int:
    """Rows in the shard files as stored, duplicates included (what the fault tests compare)."""
    dataset = _dataset(out, kind)
    return 0 if dataset is None else dataset.count_rows()


def images_per_digest(out: str, kind: str) -> dict[str, int]:
    """{config digest: distinct images} of what OUT/kind holds (two columns read)."""
    dataset = _dataset(out, kind)
    if dataset is None:
        return {}
    table = dataset.to_table(columns=["config_digest", "image_id"])
    return {row["config_digest"]: row["image_id_count_distinct"]
            for row in table.group_by("config_digest").aggregate([("image_id", "count_distinct")]).to_pylist()}


def shard_config(out: str, config_digest: str, kind: str = EIGEN_DIR) -> dict:
    """The run configuration (JSON metadata) of the shards that a config digest wrote."""
    dataset = _dataset(out, kind)
    for fragment in dataset.get_fragments() if dataset is not None else []:
        raw = (fragment.physical_schema.metadata or {}).get(CONFIG_METADATA_KEY)
        # The digest of the JSON as written: a later version's new config fields, with their
        # defaults, must not make old shards unfindable.
        if raw and hashlib.sha256(raw).hexdigest()[:16] == config_digest:
            return json.loads(raw)
    raise ValueError(f"no shard under {out}/{kind} was written by config {config_digest}")


def finished_ids(out: str, config_digest: str, kind: str = EIGEN_DIR) -> set[str]:
    """Image ids already committed under OUT/kind by a run with this config digest."""
    dataset = _dataset(out, kind)
    if dataset is None:
        return set()
    table = dataset.to_table(
        columns=["image_id"], filter=ds.field("config_digest") == config_digest
    )
    return set(table.column("image_id").to_pylist())


def shard_files(out: str, config_digest: str, kind: str = EIGEN_DIR) -> dict[str, str]:
    """{image_id: URI of the shard that holds its row} for one config's rows under OUT/kind,
    so a worker can read one image's row from one file instead of scanning them all."""
    dataset, fs = _dataset(out, kind), fsspec.core.url_to_fs(out)[0]
    found: dict[str, str] = {}
    for fragment in dataset.get_fragments() if dataset is not None else []:
        table = fragment.to_table(columns=["image_id"], filter=ds.field("config_digest") == config_digest)
        found.update(dict.fromkeys(table.column("image_id").to_pylist(), fs.unstrip_protocol(fragment.path)))
    return found


def rows_by_id(items: list[tuple[str, str]], config_digest: str,
               columns: list[str] | None = None) -> dict[str, dict]:
    """(image_id, shard URI) pairs (from shard_files) -> {image_id: its row of this config}
    (every column, or only `columns` and image_id), each shard read once. Name the columns
    where the row's stored features are not needed: as Python lists they cost ~40x the rest."""
    return {r["image_id"]: r for table in tables_by_id(items, config_digest, columns) for r in table.to_pylist()}


def tables_by_id(items: list[tuple[str, str]], config_digest: str,
                 columns: list[str] | None = None) -> Iterator[pa.Table]:
    """(image_id, shard URI) pairs (from shard_files) -> one table per shard holding these images'
    rows of this config (every column, or only `columns` and image_id), each shard read once."""
    if columns is not None:
        columns = list(dict.fromkeys(["image_id", *columns]))
    by_shard: dict[str, list[str]] = {}
    for image_id, uri in items:
        by_shard.setdefault(uri, []).append(image_id)
    for uri, ids in by_shard.items():
        with fsspec.open(uri, "rb") as f:
            yield pq.read_table(f, columns=columns, filters=(ds.field("image_id").isin(ids)
                                                             & (ds.field("config_digest") == config_digest)))
