"""Count the processes that died doing a unit of work, across restarts and nodes.

A marker `OUT/_attempts/<key>/<uuid>.json` is written when a process starts a unit (a batch,
or one image of a split batch) and removed when that process finishes it, whatever the
outcome. A marker still there was left by a process that died inside the unit: its worker
was killed (a signal, the OOM killer, `os._exit` in native code) or its node was lost. The
markers live in OUT, so every actor of every node (and a resubmitted job) sees them.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

import fsspec

from pipeline.io.storage import drop_empty_folder, fresh_listing, put_whole, with_retries

ATTEMPTS_DIR = "_attempts"


def unit_key(config_digest: str, image_ids: list[str]) -> str:
    h = hashlib.sha256(config_digest.encode())
    for image_id in sorted(image_ids):
        h.update(b"\0" + image_id.encode())
    return h.hexdigest()[:24]


class Attempts:
    def __init__(self, out: str):
        self.fs, root = fsspec.core.url_to_fs(out)
        self.root = f"{root.rstrip('/')}/{ATTEMPTS_DIR}"

    def deaths(self, key: str) -> list[dict]:
        """The markers left by processes that died inside unit `key` (pid, host, started)."""
        folder = f"{self.root}/{key}"
        fresh_listing(self.fs, folder)
        if not self.fs.exists(folder):
            return []
        found = []
        for path in self.fs.ls(folder, detail=False):
            try:
                found.append(json.loads(self.fs.cat_file(path)))
            except (FileNotFoundError, ValueError):  # removed or half-seen meanwhile
                continue
        return found

    @contextmanager
    def attempt(self, key: str) -> Iterator[None]:
        """Mark unit `key` as in progress in this process for the duration of the block."""
        path = f"{self.root}/{key}/{uuid.uuid4().hex}.json"
        marker = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        with_retries(put_whole, self.fs, path, json.dumps(marker).encode())
        try:
            yield
        finally:  # an exception is an outcome too: only a dead process leaves its marker
            with_retries(self.fs.rm, path)
            drop_empty_folder(self.fs, path.rsplit("/", 1)[0])

    def clear(self, keys: list[str]) -> None:
        """Forget the deaths of units whose results are committed."""
        for key in keys:
            folder = f"{self.root}/{key}"
            fresh_listing(self.fs, folder)
            if self.fs.exists(folder):
                self.fs.rm(folder, recursive=True)
