"""One JSON record per extraction run: OUT/runs/<UTC start>-<config digest>.json.

Shards say what exists; these say how each run went (counts, seconds, images/s, config,
errors), so a resumed or repeated job leaves a history next to its output.
"""
from __future__ import annotations

import json
from datetime import datetime

import fsspec

from pipeline.io.storage import put_whole

RUNS_DIR = "runs"


def run_summary_name(config_digest: str, started: datetime) -> str:
    """The file name under OUT/runs/ of the run of `config_digest` that started at `started`
    (a page written before the run ends, the gallery, links to it)."""
    return f"{started:%Y%m%dT%H%M%S}Z-{config_digest}.json"


def write_run_summary(out: str, summary: dict, started: datetime) -> str:
    """Write `summary` under OUT/runs/ (whole or absent, like shards); returns its URI."""
    fs, root = fsspec.core.url_to_fs(out)
    folder = f"{root.rstrip('/')}/{RUNS_DIR}"
    name = run_summary_name(summary["config_digest"], started)
    put_whole(fs, f"{folder}/{name}", json.dumps(summary, indent=2).encode())
    return fs.unstrip_protocol(f"{folder}/{name}")
