"""Write a file whole or not at all, on a local disk or an object store.

A local (POSIX) file system renames atomically, so a file is written to `_tmp-<uuid>-NAME`
and renamed into place. Object stores (S3, GCS, MinIO, Ceph RGW) have no rename: fsspec's
`mv` is a copy and a delete, and a process killed between the two leaves the temporary
key behind. There a single PUT of the final key is already atomic (an object appears only
once its upload completes), so each final key is written once, from memory, and never
through a temporary key. Readers list only final names (pipeline.shards skips `_` and `.`
names, which also hides leftover local temporaries).
"""
from __future__ import annotations

import uuid

from fsspec.implementations.local import LocalFileSystem

TMP_PREFIX = "_tmp-"


def put_whole(fs, path: str, data: bytes) -> None:
    """Make `path` hold `data`: readers see the old content (or nothing) or all of `data`."""
    folder, name = path.rsplit("/", 1)
    if isinstance(fs, LocalFileSystem):
        fs.makedirs(folder, exist_ok=True)
        tmp = f"{folder}/{TMP_PREFIX}{uuid.uuid4().hex}-{name}"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, data)


def fresh_listing(fs, folder: str) -> None:
    """Drop what `fs` cached about `folder`: s3fs and gcsfs cache listings per process, and
    other processes (actors, a second driver) write there."""
    fs.invalidate_cache(folder)


def drop_empty_folder(fs, folder: str) -> None:
    """Remove a local folder left empty (object stores have no folders to leave behind)."""
    if isinstance(fs, LocalFileSystem):
        try:
            fs.rmdir(folder)
        except OSError:  # not empty: another process's marker is in it
            pass
