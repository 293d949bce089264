"""One driver at a time per output: a run lease in OUT/_lease.json with a heartbeat.

    lease = RunLease(out); lease.acquire()    # waits while another live driver holds it
    ...                                       # a thread rewrites the heartbeat
    lease.release()
    lease_owner(out)                          # what actors check before committing

A driver that dies stops its heartbeat; the next driver waits until the heartbeat is older
than `stale_s`, then takes the lease over. The dead driver's actors may still be running
then (Ray kills them a little later): they check `lease_owner` before each commit and drop
their batch once the owner changed, so the new run does not race them. Taking the lease is
write-then-read-back, not a compare-and-swap (S3 has none): two drivers started within the
same moment could both believe they won, so readers also keep one row per (image, config)
(pipeline.io.shards). Heartbeats are the drivers' wall clocks: keep their clocks in sync (NTP).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

import fsspec

from pipeline.io.storage import fresh_listing, is_transient, put_whole, with_retries

LEASE_FILE = "_lease.json"


def _path(out: str):
    fs, root = fsspec.core.url_to_fs(out)
    return fs, f"{root.rstrip('/')}/{LEASE_FILE}"


def read_lease(out: str) -> dict | None:
    fs, path = _path(out)
    fresh_listing(fs, path.rsplit("/", 1)[0])
    try:
        return json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return None


def lease_owner(out: str) -> str | None:
    lease = read_lease(out)
    return lease["owner"] if lease else None


class RunLease:
    def __init__(self, out: str, heartbeat_s: float = 10.0, stale_s: float = 60.0, owner: str | None = None):
        if stale_s <= 2 * heartbeat_s:
            raise ValueError(f"lease stale_s ({stale_s}) must exceed two heartbeats ({heartbeat_s} s)")
        self.out, self.heartbeat_s, self.stale_s = out, heartbeat_s, stale_s
        self.owner = owner or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.waited_s = 0.0
        self.took_over: str | None = None  # the stale owner replaced, if any

    def _write(self) -> None:
        fs, path = _path(self.out)
        put_whole(fs, path, json.dumps({"owner": self.owner, "host": socket.gethostname(),
                                        "pid": os.getpid(), "heartbeat": time.time()}).encode())

    def acquire(self, log=print) -> "RunLease":
        """Take the lease, waiting while a live driver (heartbeat younger than stale_s) holds it."""
        start = time.monotonic()
        while True:
            held = read_lease(self.out)
            if held and held["owner"] != self.owner and time.time() - held["heartbeat"] < self.stale_s:
                age = time.time() - held["heartbeat"]
                log(f"waiting for run {held['owner']} (heartbeat {age:.0f} s ago; taken over after {self.stale_s:.0f} s)")
                time.sleep(min(self.heartbeat_s, self.stale_s - age + 0.1))
                continue
            self._write()
            time.sleep(min(1.0, self.heartbeat_s / 2))  # let a driver writing at the same moment show
            if lease_owner(self.out) == self.owner:
                break
        self.waited_s = time.monotonic() - start
        self.took_over = held["owner"] if held and held["owner"] != self.owner else None
        self._thread = threading.Thread(target=self._beat, name="run-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if lease_owner(self.out) != self.owner:
                    return  # taken over: this run's actors stop committing (they check the owner)
                self._write()
            except Exception as exc:  # the store unreachable: beat again next time
                if not is_transient(exc):
                    raise

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if with_retries(lease_owner, self.out) == self.owner:
            fs, path = _path(self.out)
            with_retries(fs.rm, path)
