"""Prints docs/matting.md's "Spectral layers at higher resolution" table: the layers' graph and size, cost, quality.

    python -m bench.bench_spectral_matting [--data-root DATA] [--sides 200 400]
                                           [--graphs cf knn] [--limit N] [--json FILE]

For each (graph, long side) one fresh process computes the 20 layers of every alphamatting.com
training image once (MattingConfig(solver="spectral"), colour only) and fits alpha to its
Trimap1 and Trimap2 (alpha_from_layers, upsampled, known pixels kept, as estimate_alpha does).
Printed: seconds of the layers per image, the process's peak RSS (SuperLU's factor is C memory
that tracemalloc cannot see), SAD over each trimap's unknown pixels on the tune and check
halves (tune = odd GT numbers, check = even), and the eigensolver's largest residual.
Graphs: "cf" the closed-form Laplacian by shift-invert (an LU of L), "knn" the KNN colour
graph's normalised Laplacian by the extraction's sparse Lanczos (no factorisation).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

TRIMAPS = ("trimap1", "trimap2")


def part(name: str) -> str:
    return "tune" if int("".join(c for c in name if c.isdigit())) % 2 else "check"


def run_one(data: Path, graph: str, side: int, limit: int | None) -> dict:
    from pipeline.evaluation.matting_metrics import sad
    from pipeline.matting.alpha.spectral import alpha_from_layers, spectral_layers
    from pipeline.matting.config import MattingConfig
    from pipeline.matting.resize import alpha_at_full_size, fit_long_side, resize_image, resize_trimap
    from pipeline.matting.trimap import read_trimap, split

    cfg = MattingConfig(solver="spectral", spectral_graph=graph, spectral_max_side=side)
    images = sorted((data / "images").glob("*.png"))[:limit]
    rows = []
    for path in images:
        image = np.asarray(Image.open(path).convert("RGB"))
        truth = np.asarray(Image.open(data / "alpha" / path.name).convert("L"), np.float64) / 255
        size = fit_long_side(*image.shape[:2], side)
        work = resize_image(image, size).astype(np.float64) / 255.0
        t0 = time.perf_counter()
        layers, values = spectral_layers(work, cfg)
        seconds = time.perf_counter() - t0
        row = {"image": path.stem, "part": part(path.stem), "pixels": size[0] * size[1], "seconds": seconds}
        for tset in TRIMAPS:
            trimap = read_trimap(str(data / tset / path.name))
            alpha = alpha_at_full_size(alpha_from_layers(layers, values, resize_trimap(trimap, size)), trimap)
            row[tset] = sad(alpha, truth, split(trimap)[2])
        rows.append(row)
        print(f"  {graph} {side} {path.stem}: {seconds:.1f} s, SAD {row['trimap1']:.2f} / {row['trimap2']:.2f}",
              file=sys.stderr, flush=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"graph": graph, "side": side, "peak_rss_mb": peak_mb, "images": rows}


def summary(result: dict) -> dict:
    rows = result["images"]
    out = {"graph": result["graph"], "side": result["side"], "peak_rss_mb": result["peak_rss_mb"],
           "pixels": float(np.mean([r["pixels"] for r in rows])),
           "seconds": float(np.mean([r["seconds"] for r in rows]))}
    for tset in TRIMAPS:
        for name in ("tune", "check"):
            out[f"{tset}_{name}"] = float(np.mean([r[tset] for r in rows if r["part"] == name]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"), metavar="DATA",
                    help="the folder holding alphamatting/")
    ap.add_argument("--sides", type=int, nargs="+", default=[200, 400])
    ap.add_argument("--graphs", nargs="+", default=["cf", "knn"])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", nargs=2, metavar=("GRAPH", "SIDE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = Path(args.data_root) / "alphamatting"
    if args.one:
        print(json.dumps(run_one(data, args.one[0], int(args.one[1]), args.limit)))
        return
    results = []
    for graph in args.graphs:
        for side in args.sides:
            cmd = [sys.executable, "-m", "bench.bench_spectral_matting", "--data-root", args.data_root,
                   "--one", graph, str(side)] + (["--limit", str(args.limit)] if args.limit else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(summary(results[-1])), file=sys.stderr, flush=True)
    print("\n| graph | long side | pixels | layers s / image | peak RSS MB | Trimap1 SAD tune | check "
          "| Trimap2 SAD tune | check |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in map(summary, results):
        print(f"| {s['graph']} | {s['side']} | {s['pixels']:,.0f} | {s['seconds']:.1f} | {s['peak_rss_mb']:.0f} "
              f"| {s['trimap1_tune']:.2f} | {s['trimap1_check']:.2f} | {s['trimap2_tune']:.2f} "
              f"| {s['trimap2_check']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
