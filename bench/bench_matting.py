"""Prints docs/matting.md's "Results on alphamatting.com" and "Cost at size" tables: matting quality and cost.

    python -m bench.bench_matting [--data-root DATA] [--limit N] [--json FILE]
                                  [--skip-quality] [--skip-size]

DATA holds alphamatting/ (images, alpha, trimap1, trimap2 of the training set).

Quality: SAD, MSE and gradient error (pipeline.evaluation.matting_metrics; means over the images) of
pymatting's own closed-form matting (`estimate_alpha_cf`, the baseline) and of ours (colour
only = the same closed-form system by our CG; fusion with the pixel feature Laplacian;
spectral layers) on the benchmark's Trimap1 and Trimap2, scored over each trimap's unknown
pixels, and in automatic mode (Fiedler trimap, no user input), scored over the whole image
(the trimap modes' known pixels are exact, so their whole-image SAD is the same number up to
where the ground truth disagrees with the trimap). Seconds per image include the backbone
forward where a method uses it, not model loading.

Size: one 800 x 600 and one 2000 x 1500 image (GT04 and its Trimap1 resized), each run in a
fresh process: seconds, the tracemalloc peak of Python/NumPy allocations and the process's
maximum resident set (which includes the interpreter, and torch where the backbone loads).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# (label, mode, MattingConfig overrides); "pymatting_cf" is the baseline.
METHODS = [
    ("pymatting estimate_alpha_cf (baseline)", "pymatting_cf", {}),
    ("ours: colour only, CG + ichol", "ours", {}),
    ("ours: fusion 0.001, CG + ichol", "ours", {"feature_weight": 0.001}),
    ("ours: fusion 0.01, CG + ichol", "ours", {"feature_weight": 0.01}),
    ("ours: fusion 0.1, CG + ichol", "ours", {"feature_weight": 0.1}),
    ("ours: spectral, 20 layers at 200 px", "ours", {"solver": "spectral", "spectral_max_side": 200}),
]
TRIMAP_SETS = ("trimap1", "trimap2", "auto")


def quality(data: Path, limit: int | None) -> list[dict]:
    from jobs.matte import evaluate_matting, load_backbone
    from pipeline.matting.config import MattingConfig

    backbone = load_backbone(MattingConfig())
    rows = []
    for label, kind, overrides in METHODS:
        cfg = dataclasses.replace(MattingConfig(estimate_foreground=False), **overrides)
        for tset in TRIMAP_SETS:
            if kind == "pymatting_cf" and tset == "auto":
                continue
            mode = "pymatting_cf" if kind == "pymatting_cf" else ("auto" if tset == "auto" else "trimap")
            trimaps = None if tset == "auto" else str(data / tset)
            report = evaluate_matting(str(data / "images"), str(data / "alpha"), trimaps, mode, cfg,
                                      backbone=backbone, limit=limit, per_image=True)
            row = {"method": label, "trimap": tset, **{k: report[k] for k in (
                "sad", "mse", "grad", "n_images", "n_failed", "seconds_per_image", "region")},
                "per_image": report["per_image"], "failures": report["failures"]}
            rows.append(row)
            print(f"{label:42s} {tset:8s} SAD {row['sad']:7.2f} MSE {row['mse']:.4f} "
                  f"grad {row['grad']:7.2f} {row['seconds_per_image']:6.1f} s/image "
                  f"({row['n_images']} ok, {row['n_failed']} failed)", file=sys.stderr, flush=True)
    return rows


def print_quality(rows: list[dict]) -> None:
    print("\n| method | Trimap1 SAD | MSE | grad | s/img | Trimap2 SAD | MSE | grad | s/img "
          "| auto SAD (whole image) | MSE | grad | s/img |")
    print("|---|" + "---|" * 12)
    for label, _, _ in METHODS:
        cells = []
        for tset in TRIMAP_SETS:
            r = next((r for r in rows if r["method"] == label and r["trimap"] == tset), None)
            if r is None:
                cells += ["—"] * 4
            else:
                fail = f" ({r['n_failed']} failed)" if r["n_failed"] else ""
                cells += [f"{r['sad']:.2f}{fail}", f"{r['mse']:.4f}", f"{r['grad']:.2f}", f"{r['seconds_per_image']:.1f}"]
        print(f"| {label} | " + " | ".join(cells) + " |")


# ------------------------------------------------------------------------------------ size


def _one(spec: str, data: Path) -> None:
    """Child process: '<h>x<w>:<mode>[:max_side]' -> one JSON line of cost figures."""
    from pipeline.matting.config import MattingConfig
    from pipeline.matting.matte import matte
    from pipeline.matting.trimap import read_trimap

    size, mode, *rest = spec.split(":")
    h, w = map(int, size.split("x"))
    max_side = int(rest[0]) if rest else None
    image = np.asarray(Image.open(data / "images" / "GT04.png").convert("RGB").resize((w, h), Image.Resampling.BICUBIC))
    trimap = np.asarray(Image.open(data / "trimap1" / "GT04.png").convert("L").resize((w, h), Image.Resampling.NEAREST))
    cfg = MattingConfig(max_side=max_side)
    backbone = None
    if mode == "auto":
        from jobs.matte import load_backbone

        backbone = load_backbone(cfg)
    tracemalloc.start()
    t0 = time.perf_counter()
    result = matte(image, cfg, backbone, None if mode == "auto" else read_trimap(trimap))
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    print(json.dumps({"size": size, "mode": mode, "max_side": max_side, "seconds": seconds,
                      "tracemalloc_peak_mb": peak / 2 ** 20,
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "n_unknown": int((result.trimap == 0.5).sum()),
                      "seconds_solve": result.info.get("seconds_solve"),
                      "seconds_laplacian": result.info.get("seconds_laplacian"),
                      "seconds_foreground": result.info.get("seconds_foreground")}))


SIZE_RUNS = ["600x800:trimap", "600x800:auto", "1500x2000:trimap", "1500x2000:auto",
             "1500x2000:trimap:1000"]


def size_costs(data: Path) -> list[dict]:
    out = []
    for spec in SIZE_RUNS:
        proc = subprocess.run([sys.executable, "-m", "bench.bench_matting", "--one", spec,
                               "--data-root", str(data.parent)], capture_output=True, text=True, cwd=ROOT)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not line:
            print(f"{spec}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        out.append(json.loads(line[-1]))
        print(out[-1], file=sys.stderr, flush=True)
    return out


def print_sizes(rows: list[dict]) -> None:
    print("\n| image | mode | max side | unknown px | seconds | of which solve | tracemalloc peak MB | max RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        h, w = r["size"].split("x")
        solve = f"{r['seconds_solve']:.1f}" if r["seconds_solve"] is not None else "—"
        print(f"| {w}x{h} | {r['mode']} | {r['max_side'] or 'full'} | {r['n_unknown']:,} | {r['seconds']:.1f} | "
              f"{solve} | {r['tracemalloc_peak_mb']:.0f} | {r['maxrss_mb']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"), metavar="DATA")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-size", action="store_true")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = Path(args.data_root) / "alphamatting"
    if args.one:
        return _one(args.one, data)
    report = {}
    if not args.skip_quality:
        report["quality"] = quality(data, args.limit or None)
        print_quality(report["quality"])
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
    if not args.skip_size:
        report["size"] = size_costs(data)
        print_sizes(report["size"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
