"""Prints docs/extract.md's "Throughput on Ray" and docs/objects-results.md's "Cost" (extract vs label on Ray) tables.

The extraction (or label) job at scale on this machine: throughput with 1 and 2 CPU actors on
local Ray, the driver's peak memory, and the cost of a rerun with nothing left to do.

    python -m bench.bench_scale [--images 2000] [--long-side 112] [--job extract|label] [--actors 1 2]

Synthetic JPEGs (tests/synthetic_images.py) at a small size keep 2,000 images within
minutes on 2 cores; per-image cost at full size is bench.bench_core's business. Every run is
`python -m jobs.extract` (or `jobs.label`) in its own process (a fresh local Ray each), as a user runs it.
Columns:
  wall s        the whole command: imports, listing, Ray start-up, model loads, extraction
  job img/s     the run summary's images/s: run_extract's clock, listing to last batch
  steady img/s  images per second between the first and the last committed shard (shard
                mtimes): throughput once the actors are up
  driver MB     peak RSS (VmHWM) of the driver process alone, sampled from /proc
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.synthetic_images import write_synthetic_jpegs

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    # An exiting (zombie) process has no memory lines left: no reading then.
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM")), None)


def run_job(source: Path, out: Path, long_side: int, actors: int, job: str = "extract") -> dict:
    """One `python -m jobs.JOB` run (extract or label); returns its summary plus wall time and
    the driver's peak RSS."""
    summary_file = out.parent / f"{out.name}-{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", f"jobs.{job}", str(source), "--out", str(out), "--long-side", str(long_side),
           "--eigenvectors", "4", "--num-actors", str(actors), "--summary", str(summary_file)]
    start = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "a") as log:
        job = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        peak = 0.0
        while job.poll() is None:  # VmHWM only grows: the last reading before exit is the peak
            peak = peak_rss_mb(job.pid) or peak
            time.sleep(0.2)
    wall = time.perf_counter() - start
    if job.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log.name}")
    return {**json.loads(summary_file.read_text()), "wall": wall, "driver_mb": peak}


def steady_rate(out: Path) -> float:
    """Images per second between the first and the last shard commit."""
    import pyarrow.parquet as pq

    shards = sorted((p.stat().st_mtime, pq.read_metadata(p).num_rows) for p in (out / "eigs").glob("part-*.parquet"))
    if len(shards) < 2:
        return float("nan")
    return sum(n for _, n in shards[1:]) / (shards[-1][0] - shards[0][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--long-side", type=int, default=112)
    parser.add_argument("--workdir", default=None, help="keep images and outputs here (default: a temp dir)")
    parser.add_argument("--job", choices=["extract", "label"], default="extract",
                        help="label: objects too (eigen rows, labels, instances.json, gallery)")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-scale-"))
    source = work / "images"
    if not source.exists():
        write_synthetic_jpegs(source, args.images, args.long_side)
    print(f"{args.images} synthetic JPEGs at {args.long_side} px (--long-side {args.long_side}, k 4, batch 8) "
          f"in {work}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")

    rows = []
    for actors in args.actors:
        out = work / f"{args.job}-{actors}"
        first = run_job(source, out, args.long_side, actors, args.job)
        rows.append((f"{args.job}, {actors} actor(s)", first, steady_rate(out), os.getloadavg()[0]))
    last = args.actors[-1]
    again = run_job(source, work / f"{args.job}-{last}", args.long_side, last, args.job)
    assert again["skipped"] == args.images and again["processed"] == again["failed"] == 0
    rows.append(("rerun, nothing to do", again, float("nan"), os.getloadavg()[0]))

    base = rows[0][2]
    print("\n| run | images done | wall s | job img/s | steady img/s | steady vs 1 actor | driver MB | load avg after |")
    print("|---|---|---|---|---|---|---|---|")
    for name, summary, steady, load in rows:
        done = summary["processed"] + summary["failed"]
        ratio = f"{steady / base:.2f}×" if steady == steady else "—"
        job_rate = f"{summary['images_per_second']:.2f}" if done else "—"
        steady_text = f"{steady:.2f}" if steady == steady else "—"
        print(f"| {name} | {done} | {summary['wall']:.1f} | {job_rate} | {steady_text} | {ratio} | "
              f"{summary['driver_mb']:.0f} | {load:.1f} |")


if __name__ == "__main__":
    main()
