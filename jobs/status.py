"""What an output folder holds, per configuration digest, as `ray job status` tells of a job.

    deep-spectral status OUT

For each digest: the images each table holds (eigs, labels, regions, head maps, mattes) and how many
failed (their error rows), then the runs recorded in OUT/runs (start, what was asked, counts,
status, seconds). Reads two columns of each table and the run records; never a model.
"""
from __future__ import annotations

import argparse
import json

import fsspec

from pipeline.io.runlog import RUNS_DIR
from pipeline.io.shards import (EIGEN_DIR, ERROR_DIR, HEAD_MAP_DIR, HEAD_MAP_ERROR_DIR, LABELS_DIR, MATTES_DIR,
                                REGION_DIR, REGION_ERROR_DIR, images_per_digest)

# (what a kind holds, its rows' table, its error rows' table)
KINDS = (("eigenvectors", EIGEN_DIR, ERROR_DIR), ("objects", LABELS_DIR, ERROR_DIR),
         ("regions", REGION_DIR, REGION_ERROR_DIR), ("head maps", HEAD_MAP_DIR, HEAD_MAP_ERROR_DIR),
         ("mattes", MATTES_DIR, ERROR_DIR))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="an output folder or fsspec URL of extract, label, cluster, matte or nightly")


def runs(out: str) -> list[dict]:
    """The run records of OUT/runs, oldest first."""
    fs, root = fsspec.core.url_to_fs(out)
    folder = f"{root.rstrip('/')}/{RUNS_DIR}"
    if not fs.exists(folder):
        return []
    return [json.loads(fs.cat_file(path)) for path in sorted(fs.ls(folder, detail=False)) if path.endswith(".json")]


def main(args: argparse.Namespace) -> int:
    out = args.out.rstrip("/")
    errors = images_per_digest(out, ERROR_DIR)
    rows = []
    for what, kind, error_kind in KINDS:
        failed = errors if error_kind == ERROR_DIR else images_per_digest(out, error_kind)
        for digest, n in sorted(images_per_digest(out, kind).items()):
            rows.append((digest, what, n, failed.get(digest, 0)))
    done = {row[0] for row in rows}
    rows += [(digest, "(failed only)", 0, n) for digest, n in sorted(errors.items()) if digest not in done]
    if not rows:
        print(f"{out}: no shards")
        return 0
    print(f"{out}\n\n| config digest | holds | images | failed |\n|---|---|---|---|")
    for digest, what, n, failed in rows:
        print(f"| {digest} | {what} | {n} | {failed} |")
    recorded = runs(out)
    print(f"\n{len(recorded)} run(s) recorded in {out}/{RUNS_DIR}")
    if recorded:
        print("| started | config digest | processed | failed | skipped | status | seconds | mode |\n"
              "|---|---|---|---|---|---|---|---|")
    for run in recorded:
        status = run.get("status", "")
        if run.get("why"):
            status += f": {run['why']}"
        print(f"| {run.get('started', '')} | {run.get('config_digest', '')} | {run.get('processed', '')} | "
              f"{run.get('failed', '')} | {run.get('skipped', '')} | {status} | {run.get('seconds', '')} | "
              f"{run.get('mode', '')} |")
    return 0
