"""Rewrite an extraction's shards cut differently: the same rows, other files, another order.

    recut(src, dst, rows_per_shard=1, reverse=True)     SRC/eigs -> DST/eigs

    python -m tests.shard_layouts SRC DST [--rows-per-shard N] [--keep-order]

Each new shard keeps the source shards' configuration metadata (what shard_config reads), so
DST is an extraction output like SRC for every stage that reads it. The order-free clustering is
tested by running the same labelling over SRC and a recut DST (tests/test_shard_order.py).
"""
from __future__ import annotations

import argparse
import glob
import os

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.schema import CONFIG_METADATA_KEY
from pipeline.io.shards import EIGEN_DIR


def recut(src: str, dst: str, rows_per_shard: int = 1, reverse: bool = True, compression: str = "zstd") -> int:
    """Copy every row of SRC/eigs into DST/eigs, `rows_per_shard` rows per file, the rows in
    reverse order of SRC's scan (sorted files, rows in file order) unless reverse is False;
    files are named so that DST's sorted listing is that order; `compression` "none" writes
    faster (a large extraction). Returns the rows written."""
    files = sorted(glob.glob(os.path.join(src, EIGEN_DIR, "part-*.parquet")))
    os.makedirs(os.path.join(dst, EIGEN_DIR), exist_ok=True)
    # (file, row) of every row in scan order; rows are read back one file at a time.
    places = [(f, i) for f in files for i in range(pq.ParquetFile(f).metadata.num_rows)]
    if reverse:
        places = places[::-1]
    written, cache = 0, {}
    for start in range(0, len(places), rows_per_shard):
        chunk = places[start:start + rows_per_shard]
        tables = []
        for f, i in chunk:
            if f not in cache:
                cache.clear()  # one source file in memory at a time (reverse order visits each once)
                cache[f] = pq.read_table(f)
            tables.append(cache[f].slice(i, 1))
        metadata = {CONFIG_METADATA_KEY: tables[0].schema.metadata[CONFIG_METADATA_KEY]}
        table = pa.concat_tables(tables).replace_schema_metadata(metadata)
        pq.write_table(table, os.path.join(dst, EIGEN_DIR, f"part-{start // rows_per_shard:08d}.parquet"),
                       compression=compression)
        written += table.num_rows
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.shard_layouts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--rows-per-shard", type=int, default=1)
    parser.add_argument("--keep-order", action="store_true")
    parser.add_argument("--compression", default="zstd", help="Parquet codec of the new shards (none: faster)")
    args = parser.parse_args()
    print(f"{recut(args.src, args.dst, args.rows_per_shard, not args.keep_order, args.compression)} rows written to {args.dst}")
