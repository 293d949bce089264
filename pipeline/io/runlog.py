"""One JSON record per extraction run: OUT/runs/<UTC start>-<config digest>.json.

Shards say what exists; these say how each run went (counts, seconds, images/s, config,
errors), so a resumed or repeated job leaves a history next to its output.
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime

import fsspec

RUNS_DIR = "runs"


def write_run_summary(out: str, summary: dict, started: datetime) -> str:
    """Write `summary` under OUT/runs/ (whole or absent, like shards); returns its URI."""
    fs, root = fsspec.core.url_to_fs(out)
    folder = f"{root.rstrip('/')}/{RUNS_DIR}"
    fs.makedirs(folder, exist_ok=True)
    name = f"{started:%Y%m%dT%H%M%S}Z-{summary['config_digest']}.json"
    tmp = f"{folder}/_tmp-{uuid.uuid4().hex}-{name}"
    with fs.open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
    fs.mv(tmp, f"{folder}/{name}")
    return fs.unstrip_protocol(f"{folder}/{name}")
