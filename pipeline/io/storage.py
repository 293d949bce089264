"""Write a file whole or not at all, on a local disk or an object store.

A local (POSIX) file system renames atomically, so a file is written to `_tmp-<uuid>-NAME`
and renamed into place. Object stores (S3, GCS, MinIO, Ceph RGW) have no rename: fsspec's
`mv` is a copy and a delete, and a process killed between the two leaves the temporary
key behind. There a single PUT of the final key is already atomic (an object appears only
once its upload completes), so each final key is written once, from memory, and never
through a temporary key. Readers list only final names (pipeline.io.shards skips `_` and `.`
names, which also hides leftover local temporaries).
"""
from __future__ import annotations

import time
import uuid

from fsspec.implementations.local import LocalFileSystem

TMP_PREFIX = "_tmp-"
# Errors that mean "the store is unreachable now", by class name anywhere in the exception's
# MRO, so botocore / aiohttp / google-auth need not be imported: builtins ConnectionError and
# TimeoutError, botocore's EndpointConnectionError (a ConnectionError of its own hierarchy),
# ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError, aiohttp's client errors.
TRANSIENT_ERRORS = {"ConnectionError", "TimeoutError", "ConnectTimeoutError", "ReadTimeoutError",
                    "ConnectionClosedError", "ClientConnectorError", "ServerDisconnectedError"}
RETRY_S = 300.0  # how long an outage of the store is waited out before the error is raised


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


def is_transient(exc: BaseException) -> bool:
    return any(cls.__name__ in TRANSIENT_ERRORS for cls in type(exc).__mro__)


def with_retries(fn, *args, retry_s: float = RETRY_S, **kwargs):
    """fn(*args, **kwargs), retried with backoff while it fails with a transient error (the
    object store restarting or unreachable), for up to retry_s seconds. Client libraries
    retry a few seconds on their own (botocore: ~6 s); an outage of minutes needs this."""
    deadline, pause = time.monotonic() + retry_s, 0.5
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 10.0)
