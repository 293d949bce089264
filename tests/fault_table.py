"""Counts for the fault table in docs/faults.md, from the fault tests' real runs: each test
prints one `fault-table:` line (visible with `pytest -s`) and appends it as JSON to
out/fault-table.jsonl (ignored by git)."""
from __future__ import annotations

import json
from collections import Counter

from pipeline.io.shards import EIGEN_DIR, ERROR_DIR, _dataset
from tests.conftest import ROOT


def counts(out: str) -> dict:
    """Distinct rows and error rows as readers see them, and duplicate (image, config) rows
    as the shard files store them (raw rows minus distinct keys, both tables)."""
    result = {"duplicates": 0}
    for kind, name in ((EIGEN_DIR, "rows_out"), (ERROR_DIR, "error_rows")):
        dataset = _dataset(out, kind)
        keys = [] if dataset is None else list(zip(
            *dataset.to_table(columns=["image_id", "config_digest"]).to_pydict().values()))
        per_key = Counter(keys)
        result[name] = len(per_key)
        result["duplicates"] += sum(n - 1 for n in per_key.values())
    return result


def report(fault: str, images_in: int, out: str, **extra) -> dict:
    line = {"fault": fault, "images_in": images_in, **counts(out), **extra}
    print("fault-table:", json.dumps(line))
    (ROOT / "out").mkdir(exist_ok=True)
    with open(ROOT / "out" / "fault-table.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    return line
