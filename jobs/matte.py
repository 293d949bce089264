"""Matting job: images -> alpha PNGs and RGBA cut-outs; and its benchmark evaluation.

    python -m jobs.matte IMAGE... --out DIR [--trimap FILE...|--trimap DIR] [--fusion W]
                         [--solver cg|spectral] [--max-side N] [--device auto|cpu|cuda]
    python -m jobs.matte evaluate --images DIR --alpha DIR [--trimaps DIR] --json FILE
                         [--mode auto|trimap|pymatting_cf] [method options as above]

Without a trimap (automatic mode) the trimap is made from the Fiedler vector of the patch
graph (pipeline.matting.trimap); with one (trimap mode) it is used as given. Per image, OUT gets
STEM.alpha.png (8-bit alpha), STEM.rgba.png (foreground by pymatting's
estimate_foreground_ml, straight alpha), in automatic mode STEM.trimap.png, with
--save-layers STEM.layers.npy (spectral solver), and matte.json (configuration, per-image
timings, failures). One failed image is recorded and the others go on.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import posixpath
import sys
import time
import traceback

import numpy as np
from PIL import Image

from pipeline.config import BackboneConfig
from pipeline.io.images import decode_image
from pipeline.matting.matte import DEVICES, LAYER_GRAPHS, SOLVERS, MattingConfig, cutout, matte
from pipeline.evaluation.matting_metrics import matting_errors
from pipeline.io.sources import list_images, read_bytes
from pipeline.matting.trimap import REFINE, UNITS, TrimapConfig, read_trimap, split

MODES = ("auto", "trimap", "pymatting_cf")


# --------------------------------------------------------------------------- configuration


def config_from_args(args: argparse.Namespace) -> MattingConfig:
    threshold = args.threshold if args.threshold == "mean" else float(args.threshold)
    return MattingConfig(
        feature_weight=args.fusion, feature_radius=args.feature_radius,
        feature_stride=args.feature_stride, feature_power=args.feature_power,
        solver=args.solver, preconditioner=args.preconditioner, device=args.device,
        n_layers=args.layers, spectral_max_side=args.spectral_side, spectral_graph=args.spectral_graph, max_side=args.max_side or None,
        estimate_foreground=not getattr(args, "no_foreground", False),
        trimap=TrimapConfig(threshold=threshold, fg_width=args.fg_width, bg_width=args.bg_width,
                            unit=args.width_unit, refine=args.refine_trimap),
        backbone=BackboneConfig(name=args.backbone, weights=args.weights, long_side=args.long_side or None),
    )


def needs_backbone(cfg: MattingConfig, automatic: bool) -> bool:
    return automatic or cfg.feature_weight > 0


def load_backbone(cfg: MattingConfig):
    from pipeline.features.backbones import create_backbone

    b = cfg.backbone
    return create_backbone(b.name, weights=b.weights, features=b.features,
                           resize=b.long_side if b.long_side else "crop")


def _stem(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path))[0]


def _read_image(uri: str) -> np.ndarray:
    return decode_image(read_bytes(uri))


def _read_alpha(uri: str) -> np.ndarray:
    """Ground-truth alpha image -> (H, W) float64 in [0, 1] (first channel of RGB files)."""
    arr = np.asarray(Image.open(io.BytesIO(read_bytes(uri))), dtype=np.float64)
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr / (65535.0 if arr.max() > 255 else 255.0)


def _save_png(path: str, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(values) * 255), 0, 255).astype(np.uint8)


# -------------------------------------------------------------------------------- matting


def _trimaps_for(images: list[str], trimaps: list[str] | None) -> list[str | None]:
    """--trimap: nothing, one folder (matched by file stem), or one file per image."""
    if not trimaps:
        return [None] * len(images)
    if len(trimaps) == 1 and os.path.isdir(trimaps[0]):
        by_stem = {_stem(r.uri): r.uri for r in list_images(trimaps[0])}
        missing = [p for p in images if _stem(p) not in by_stem]
        if missing:
            raise SystemExit(f"no trimap in {trimaps[0]} for {', '.join(missing[:5])}")
        return [by_stem[_stem(p)] for p in images]
    if len(trimaps) != len(images):
        raise SystemExit(f"--trimap: {len(trimaps)} files for {len(images)} images (give one each, or a folder)")
    return list(trimaps)


def run_matte(args: argparse.Namespace) -> dict:
    cfg = config_from_args(args)
    images = [r.uri for src in args.images for r in list_images(src)]
    if not images:
        raise SystemExit("no images found")
    trimaps = _trimaps_for(images, args.trimap)
    os.makedirs(args.out, exist_ok=True)
    backbone = None
    if needs_backbone(cfg, any(t is None for t in trimaps)):
        backbone = load_backbone(cfg)
    records, failures = [], []
    for uri, trimap_uri in zip(images, trimaps):
        stem = _stem(uri)
        try:
            image = _read_image(uri)
            trimap = read_trimap(read_bytes(trimap_uri)) if trimap_uri else None
            result = matte(image, cfg, backbone, trimap)
            _save_png(os.path.join(args.out, f"{stem}.alpha.png"), _to_uint8(result.alpha))
            if result.foreground is not None:
                _save_png(os.path.join(args.out, f"{stem}.rgba.png"), cutout(result.foreground, result.alpha))
            if trimap is None:
                _save_png(os.path.join(args.out, f"{stem}.trimap.png"), _to_uint8(result.trimap))
            if args.save_layers and result.layers is not None:
                np.save(os.path.join(args.out, f"{stem}.layers.npy"), result.layers.astype(np.float32))
            info = {k: v for k, v in result.info.items() if k != "eigenvalues"}
            records.append({"image": uri, "trimap": trimap_uri or "auto", **info})
            print(f"{stem}: {result.info['seconds_total']:.2f} s", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - one bad image must not stop the others
            failures.append({"image": uri, "error": f"{type(e).__name__}: {e}"})
            print(f"{stem}: FAILED {type(e).__name__}: {e}", file=sys.stderr)
    report = {"n_images": len(records), "n_failed": len(failures), "config": cfg.to_dict(),
              "images": records, "failures": failures}
    with open(os.path.join(args.out, "matte.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


# ----------------------------------------------------------------------------- evaluation


def _pairs(images_dir: str, alpha_dir: str, trimaps_dir: str | None) -> list[tuple[str, str, str | None, str]]:
    """(image, alpha, trimap or None, id) for every image with a ground-truth alpha (by stem)."""
    alphas = {_stem(r.uri): r.uri for r in list_images(alpha_dir)}
    trimaps = {_stem(r.uri): r.uri for r in list_images(trimaps_dir)} if trimaps_dir else {}
    out = []
    for r in list_images(images_dir):
        stem = _stem(r.uri)
        if stem not in alphas:
            continue
        if trimaps_dir and stem not in trimaps:
            raise ValueError(f"no trimap for {r.image_id} in {trimaps_dir}")
        out.append((r.uri, alphas[stem], trimaps.get(stem), r.image_id))
    return out


def evaluate_matting(images_dir: str, alpha_dir: str, trimaps_dir: str | None = None,
                     mode: str | None = None, cfg: MattingConfig = MattingConfig(), backbone=None,
                     limit: int | None = None, per_image: bool = False) -> dict:
    """Alpha errors over a benchmark folder -> a flat dict of mean metrics.

    mode: "trimap" (solve with the given trimaps; the default when trimaps_dir is given),
    "auto" (the automatic Fiedler trimap; the default otherwise) or "pymatting_cf" (the
    baseline: pymatting's estimate_alpha_cf on the given trimaps). Errors are measured over
    the given trimap's unknown pixels when trimaps_dir is given, else over the whole image
    (in trimap mode known pixels are exact, so whole-image and unknown-region SAD differ only
    where the ground truth disagrees with the trimap). seconds_per_image: mean wall time of
    the method per image (features, trimap, alpha, foreground), not reading or scoring.
    """
    mode = mode or ("trimap" if trimaps_dir else "auto")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode != "auto" and not trimaps_dir:
        raise ValueError(f"mode {mode!r} needs trimaps_dir")
    pairs = _pairs(images_dir, alpha_dir, trimaps_dir)[:limit or None]
    if mode == "pymatting_cf":
        from pymatting import estimate_alpha_cf
    elif backbone is None and needs_backbone(cfg, mode == "auto"):
        backbone = load_backbone(cfg)
    rows, failures, seconds = [], [], []
    for image_uri, alpha_uri, trimap_uri, image_id in pairs:
        try:
            image = _read_image(image_uri)
            gt = _read_alpha(alpha_uri)
            given = read_trimap(read_bytes(trimap_uri)) if trimap_uri else None
            t0 = time.perf_counter()
            if mode == "pymatting_cf":
                alpha = estimate_alpha_cf(image.astype(np.float64) / 255.0, given)
            else:
                alpha = matte(image, cfg, backbone, given if mode == "trimap" else None).alpha
            seconds.append(time.perf_counter() - t0)
            region = split(given)[2] if given is not None else None
            rows.append({"image_id": image_id, **matting_errors(alpha, gt, region), "seconds": seconds[-1]})
        except Exception as e:  # noqa: BLE001 - counted and reported, the others go on
            failures.append({"image_id": image_id, "error": f"{type(e).__name__}: {e}",
                             "trace": traceback.format_exc(limit=3)})
    report = {key: float(np.mean([r[key] for r in rows])) if rows else float("nan")
              for key in ("sad", "mse", "grad")}
    report.update({
        "n_images": len(rows), "n_failed": len(failures),
        "seconds_per_image": float(np.mean(seconds)) if seconds else float("nan"),
        "mode": mode, "region": "trimap_unknown" if trimaps_dir else "image",
        "config": cfg.to_dict() if mode != "pymatting_cf" else {"method": "pymatting.estimate_alpha_cf"},
        "failures": failures,
    })
    if per_image:
        report["per_image"] = rows
    return report


# ------------------------------------------------------------------------------------ CLI


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    d, t, b = MattingConfig(), TrimapConfig(), BackboneConfig()
    m = parser.add_argument_group("alpha")
    m.add_argument("--solver", choices=SOLVERS, default=d.solver,
                   help="cg: constrained solve of the fused Laplacian; spectral: its smallest eigenvectors as layers")
    m.add_argument("--fusion", type=float, default=d.feature_weight, metavar="W",
                   help="weight of the pixel feature Laplacian relative to the colour one (0 = closed-form matting)")
    m.add_argument("--feature-radius", type=int, default=d.feature_radius)
    m.add_argument("--feature-stride", type=float, default=d.feature_stride, help="stencil spacing in patch cells")
    m.add_argument("--feature-power", type=float, default=d.feature_power)
    m.add_argument("--layers", type=int, default=d.n_layers, help="spectral: number of eigenvectors")
    m.add_argument("--spectral-side", type=int, default=d.spectral_max_side, help="spectral: long side they are computed at")
    m.add_argument("--spectral-graph", choices=tuple(LAYER_GRAPHS), default=d.spectral_graph,
                   help="spectral: layers of the closed-form Laplacian (cf) or of the KNN colour graph (knn)")
    m.add_argument("--max-side", type=int, default=0, help="solve at this long side at most, upsample alpha (0 = full size)")
    m.add_argument("--preconditioner", choices=("auto", "ichol", "jacobi"), default=d.preconditioner)
    m.add_argument("--device", choices=DEVICES, default=d.device, help="where CG runs (cuda: CuPy)")
    a = parser.add_argument_group("automatic trimap (when none is given)")
    a.add_argument("--threshold", default="mean", help="Fiedler threshold: a number or 'mean'")
    a.add_argument("--fg-width", type=float, default=t.fg_width, help="erosion of the mask into sure foreground")
    a.add_argument("--bg-width", type=float, default=t.bg_width, help="distance outside the mask to sure background")
    a.add_argument("--width-unit", choices=UNITS, default=t.unit)
    a.add_argument("--refine-trimap", choices=REFINE, default=t.refine, help="guided: snap the cell mask to edges first")
    k = parser.add_argument_group("backbone (automatic trimap and fusion)")
    k.add_argument("--backbone", default=b.name)
    k.add_argument("--weights", default=None)
    k.add_argument("--long-side", type=int, default=b.long_side)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files, folders or globs")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--trimap", nargs="+", default=None,
                        help="trimap mode: one trimap per image (same order) or one folder (matched by stem)")
    parser.add_argument("--no-foreground", action="store_true", help="alpha only, no RGBA cut-out")
    parser.add_argument("--save-layers", action="store_true", help="spectral solver: save the layers as .npy")
    add_method_arguments(parser)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="folder of images")
    parser.add_argument("--alpha", required=True, help="folder of ground-truth alphas (matched by stem)")
    parser.add_argument("--trimaps", default=None, help="folder of trimaps: solve with them (mode trimap) "
                        "and score their unknown region; without: automatic trimaps, whole image scored")
    parser.add_argument("--mode", choices=MODES, default=None)
    parser.add_argument("--json", default=None, help="write the metrics JSON here")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--per-image", action="store_true", help="include per-image errors in the JSON")
    add_method_arguments(parser)


def main(args: argparse.Namespace) -> int:
    report = run_matte(args)
    print(json.dumps({k: report[k] for k in ("n_images", "n_failed")}))
    return 1 if report["n_failed"] and not report["n_images"] else 0


def main_evaluate(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    cfg = dataclasses.replace(cfg, estimate_foreground=False)  # scores need alpha only
    report = evaluate_matting(args.images, args.alpha, args.trimaps, args.mode, cfg,
                              limit=args.limit or None, per_image=args.per_image)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k not in ("config", "failures", "per_image")}))
    return 0 if report["n_images"] else 1


def cli(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["evaluate"]:
        parser = argparse.ArgumentParser(prog="python -m jobs.matte evaluate", description=__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        add_evaluate_arguments(parser)
        return main_evaluate(parser.parse_args(argv[1:]))
    parser = argparse.ArgumentParser(prog="python -m jobs.matte", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
