"""Nightly re-extraction: one versioned output per backbone and configuration, incremental.

    python -m jobs.nightly SOURCE --out-root URI --backbone NAME [every `extract` option] [--local]
    python -m jobs.nightly --dataset coco --root URI --annotations FILE --out-root URI --backbone NAME
    deep-spectral nightly ...                                    # the same

Each run extracts into OUT_ROOT/<backbone>-<config digest>/ (eigs/, errors/) through
jobs.extract.run_extract, which skips every image that folder already holds for the digest: a
nightly run does only the images added since, and a new backbone or option starts a new folder
beside the old ones. OUT_ROOT/manifest.json records every version:

    {"updated": ISO time,
     "versions": {"<backbone>-<digest>": {
         "backbone", "config_digest", "config",
         "images": images with a row, "failed": images with only error rows,
         "errors": {"count", "first": [{"image_id", "stage", "reason"}, ... up to 10]},
         "runs": [{"source", "started", "ended" (ISO, UTC), "seconds", "processed", "failed",
                   "skipped", "images_per_s", "error" (only when the run raised)}]}}}

The totals are counted from the shards, not summed over runs, so they stay right when runs
retry errors or a run crashed before its record. The manifest is rewritten whole after each
run (pipeline.io.storage.put_whole: a rename locally, one PUT on an object store): runs into one OUT_ROOT must not overlap (one
cron entry), or one run's record can be lost; the shards are unaffected.
"""
from __future__ import annotations


import argparse
import json
import re
import sys
import time
from datetime import datetime, timezone

import fsspec

from jobs import extract
from jobs.options import dry_run
from pipeline.config import ExtractConfig, RuntimeConfig
from pipeline.io.shards import EIGEN_DIR, ERROR_DIR, finished_ids, read_table
from pipeline.io.sources import ImageRef
from pipeline.io.storage import fresh_listing, put_whole

# What `deep-spectral nightly --help` says (the module docstring is for developers).
HELP = """Incremental, versioned re-extraction: one output folder per backbone and settings.

  deep-spectral nightly --dataset coco --root COCO --annotations FILE --out-root ROOT --backbone NAME

Each run extracts into ROOT/<backbone>-<digest>/ only the images added since the last run; a
new backbone or setting starts a new folder beside the old ones. ROOT/manifest.json records
every version: images done and failed, and its runs.
"""

MANIFEST = "manifest.json"
FIRST_ERRORS = 10


def version_name(cfg: ExtractConfig) -> str:
    """"<backbone>-<config digest>", the backbone name made safe for a folder name."""
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', cfg.backbone.name)}-{cfg.digest()}"


def run_nightly(source: str, refs: list[ImageRef], out_root: str, cfg: ExtractConfig,
                runtime: RuntimeConfig, local: bool = False) -> dict:
    """Extract what the version folder lacks, record the run; returns the version's manifest entry."""
    version = version_name(cfg)
    out = f"{out_root.rstrip('/')}/{version}"
    started, counts, error = time.time(), {}, {}
    try:
        summary = extract.run_extract(source, out, cfg, runtime, refs=refs, local=local)
        counts = {key: summary[key] for key in ("processed", "failed", "skipped")}
        if summary.get("status") == "failed":
            error = {"error": summary["why"]}
    except Exception as exc:  # recorded, then raised: a crashed night shows in the manifest
        error = {"error": f"{type(exc).__name__}: {exc}"}
        raise
    finally:
        ended = time.time()
        handled = counts.get("processed", 0) + counts.get("failed", 0)
        run = {"source": source, "started": _iso(started), "ended": _iso(ended),
               "seconds": round(ended - started, 2), **counts,
               "images_per_s": round(handled / (ended - started), 3) if handled else 0.0, **error}
        entry = _record(out_root, version, cfg, out, run)
    return entry


def _record(out_root: str, version: str, cfg: ExtractConfig, out: str, run: dict) -> dict:
    fs, root = fsspec.core.url_to_fs(out_root)
    path = f"{root.rstrip('/')}/{MANIFEST}"
    fresh_listing(fs, root)
    manifest = json.loads(fs.cat_file(path)) if fs.exists(path) else {"versions": {}}
    entry = manifest["versions"].setdefault(version, {
        "backbone": cfg.backbone.name, "config_digest": cfg.digest(), "config": cfg.to_dict(), "runs": []})
    entry["runs"].append(run)
    entry.update(_totals(out, cfg.digest()))
    manifest["updated"] = run["ended"]
    # Readers see the old manifest or the new one, never half of one (a rename locally, one
    # PUT on an object store).
    put_whole(fs, path, json.dumps(manifest, indent=2).encode())
    return entry


def _totals(out: str, digest: str) -> dict:
    """Images done and failed for this digest, as the shards hold them."""
    done = finished_ids(out, digest, EIGEN_DIR)
    table = read_table(out, ERROR_DIR, columns=["image_id", "config_digest", "stage", "reason"])
    failed = {} if table is None else {
        r["image_id"]: {"image_id": r["image_id"], "stage": r["stage"], "reason": r["reason"]}
        for r in table.to_pylist()
        if r["config_digest"] == digest and r["image_id"] not in done}  # done on a retry: not failed
    first = [failed[i] for i in sorted(failed)[:FIRST_ERRORS]]
    return {"images": len(done), "failed": len(failed), "errors": {"count": len(failed), "first": first}}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    extract.add_source_options(parser)
    parser.add_argument("--out-root", required=True,
                        help="folder or fsspec URL holding one <backbone>-<digest>/ folder per version")
    parser.add_argument("--local", action="store_true", help="extract in this process instead of on Ray")
    extract.OPTIONS.add_to(parser)


def main(args: argparse.Namespace) -> int:
    configs = extract.configs_from_args(args)
    cfg, runtime = configs["extract"], configs["runtime"]
    if args.dry_run:
        return dry_run(configs, {"extract": cfg.digest()})
    try:
        source, refs = extract.images_from_args(args)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    entry = run_nightly(source, refs, args.out_root, cfg, runtime, local=args.local)
    print(f"{version_name(cfg)}: {entry['images']} images, {entry['failed']} failed, "
          f"{len(entry['runs'])} run(s); manifest {args.out_root.rstrip('/')}/{MANIFEST}")
    last = entry["runs"][-1] if entry["runs"] else {}
    if last.get("error"):
        print(f"error: the run failed: {last['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m jobs.nightly", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
