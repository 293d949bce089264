"""Prints docs/semantic.md's "Memory of the final task" table: `cluster`'s memory and time as the dataset grows.

    python -m bench.bench_cluster [--sizes 10000 100000 1000000] [--dim 384]

Writes synthetic extraction shards (10 segments per image, `dim`-dimensional segment features
drawn from a 20-component mixture, 4x4 segment maps on 56 px images), then runs the whole
final task (jobs.cluster.cluster_and_label: fit + pseudo-label PNGs + labels table) in a fresh
process per size and reports its peak RSS and seconds. Flat memory means the peak does not
follow the number of segments.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from pipeline.config import BackboneConfig, ExtractConfig, SegmentsConfig
from pipeline.io.schema import eigen_row, eigen_table
from pipeline.io.shards import EIGEN_DIR, write_shard

SEGMENTS_PER_IMAGE = 10
ROWS_PER_SHARD = 1000
CHILD = """
import json, resource, sys, time
from jobs.cluster import cluster_and_label
from pipeline.semantic.clustering import ClusterConfig
from pipeline.semantic.labelling import PseudoLabelConfig
shards, out, digest = sys.argv[1:4]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.time()
record = cluster_and_label(shards, out, digest, PseudoLabelConfig(ClusterConfig(n_clusters=20, seed=0, pca_dim=0, whiten=False)))
print(json.dumps({"seconds": time.time() - started, "import_rss_kb": base,
                  "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "n_segments": record["n_segments"], "fit_seconds": record["fit_seconds"],
                  "lloyd_passes": record["lloyd_passes"]}))
"""


def write_synthetic_shards(out: str, n_segments: int, dim: int, seed: int = 0) -> str:
    """-> the config digest of `n_segments` synthetic segments written as shards under OUT."""
    cfg = ExtractConfig(backbone=BackboneConfig(long_side=56), segments=SegmentsConfig(n_segments=SEGMENTS_PER_IMAGE))
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim)).astype(np.float32)
    segment_map = np.zeros((4, 4), np.int16)
    segment_map.flat[6:] = np.arange(1, SEGMENTS_PER_IMAGE + 1)
    boxes = np.tile([0, 0, 56, 56], SEGMENTS_PER_IMAGE).astype(np.float32)
    n_images = n_segments // SEGMENTS_PER_IMAGE
    for start in range(0, n_images, ROWS_PER_SHARD):
        rows = []
        for i in range(start, min(start + ROWS_PER_SHARD, n_images)):
            features = centres[rng.integers(0, 20, SEGMENTS_PER_IMAGE)]
            features = features + 0.5 * rng.normal(size=features.shape).astype(np.float32)
            rows.append(eigen_row(
                image_id=f"img{i:08d}.jpg", source_uri=f"synthetic://{i}", image_sha256="0",
                height=56, width=56, input_height=56, input_width=56, patch_size=14, grid_h=4, grid_w=4,
                backbone=cfg.backbone.name, weights_digest="synthetic", config_digest=cfg.digest(), k=1,
                eigenvalues=[0.0], eigenvectors=np.full(16, 0.25, np.float32), eigensolver="none",
                max_residual=0.0, n_segments=SEGMENTS_PER_IMAGE, segment_map=segment_map.ravel(),
                segment_boxes=boxes, segment_dim=dim, segment_features=features.ravel()))
        write_shard(eigen_table(rows), out, EIGEN_DIR, cfg.to_json())
    return cfg.digest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--workdir", default=None, help="where the synthetic shards go (default: a temp dir)")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_cluster_")
    results = []
    for n in args.sizes:
        shards, out = f"{workdir}/shards-{n}", f"{workdir}/labels-{n}"
        started = time.time()
        digest = write_synthetic_shards(shards, n, args.dim)
        write_seconds = time.time() - started
        proc = subprocess.run([sys.executable, "-c", CHILD, shards, out, digest], check=True,
                              capture_output=True, text=True, cwd=os.getcwd())
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result.update(segments=n, write_seconds=write_seconds)
        results.append(result)
        print(f"  {n} segments: {json.dumps(result)}", flush=True)
    base = results[0]
    print(f"\nfinal task (fit + PNGs + labels table), {args.dim}-d features, 20 clusters, "
          f"sample_size {100_000}; {os.cpu_count()} cores")
    print(f"{'segments':>10} {'shards':>7} {'seconds':>8} {'fit s':>7} {'passes':>6} "
          f"{'peak RSS MB':>11} {'x first':>7} {'over imports MB':>15}")
    for r in results:
        shards = -(-r["segments"] // (SEGMENTS_PER_IMAGE * ROWS_PER_SHARD))
        print(f"{r['segments']:>10} {shards:>7} {r['seconds']:>8.1f} {r['fit_seconds']:>7.1f} "
              f"{r['lloyd_passes']:>6} {r['peak_rss_kb'] / 1024:>11.0f} "
              f"{r['peak_rss_kb'] / base['peak_rss_kb']:>7.2f} "
              f"{(r['peak_rss_kb'] - r['import_rss_kb']) / 1024:>15.0f}")


if __name__ == "__main__":
    main()
