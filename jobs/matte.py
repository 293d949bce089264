"""Matting job: images -> alpha mattes and RGBA cut-outs, on Ray; and its benchmark evaluation.

    python -m jobs.matte SOURCE --out OUT                      # starts a local Ray
    python -m jobs.matte SOURCE --out OUT --trimap TRIMAP_DIR  # trimap mode (matched by file stem)
    ray job submit --working-dir . -- python -m jobs.matte --dataset voc --root URI --out OUT
    python -m jobs.matte evaluate --images DIR --alpha DIR [--trimaps DIR] --json FILE
                         [--mode auto|trimap|pymatting_cf] [method options]

SOURCE and --dataset/--root list images as for `extract`. Without --trimap (automatic mode) each
trimap is made from the Fiedler vector of the patch graph (pipeline.matting.trimap); with it
(one folder, matched by file stem, or one file per image in listing order) the given ones are
used. The driver drops what OUT already holds for this configuration and maps the rest through
a CPU decode stage and `MatteActor`s (jobs/runner.py), whose batches commit

    OUT/mattes/part-*.parquet   one row per image (pipeline.io.schema.MATTE_SCHEMA): alpha,
                                RGBA cut-out and automatic trimap as PNG bytes, timings
    OUT/errors/part-*.parquet   one row per image that could not be matted (a bad file or trimap)
    OUT/runs/*.json             the run summary: config, counts, mean seconds per stage

and then, from the rows, the files users open: OUT/STEM.alpha.png (8-bit alpha), STEM.rgba.png
(foreground by pymatting's estimate_foreground_ml, straight alpha; not with --no-foreground)
and in automatic mode STEM.trimap.png, STEM the image id without its extension. A rerun skips
the images with a row (or, without --retry-errors, an error row) for the configuration; the
images a run mattes get all their files written, the others only those that are missing. --save-layers (spectral solver) saves STEM.layers.npy
as the images are matted; the layers are not in the rows.
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
from datetime import datetime, timezone

import fsspec
import numpy as np
from PIL import Image

from jobs import extract, runner
from pipeline.batch.matter import MatteItem, file_stem, load_backbone, needs_backbone
from pipeline.config import BackboneConfig, RuntimeConfig, canonical_json
from pipeline.evaluation.matting_metrics import matting_errors
from pipeline.features.registry import get_spec
from pipeline.io.attempts import Attempts
from pipeline.io.images import decode_image
from pipeline.io.schema import error_table, matte_table
from pipeline.io.shards import ERROR_DIR, MATTES_DIR, finished_ids, scan_batches, shard_name
from pipeline.io.sources import ImageRef, list_images, read_bytes
from pipeline.io.storage import fresh_listing, put_whole
from pipeline.matting.matte import (DEVICES, LAYER_GRAPHS, SOLVERS, MattingConfig, matte, matte_digest,
                                    matte_record)
from pipeline.matting.trimap import REFINE, UNITS, TrimapConfig, read_trimap, split

MODES = ("auto", "trimap", "pymatting_cf")
# The PNG files written from the rows: each is OUT/STEM.<kind>.png from MATTE_SCHEMA's column <kind>.
FILES = ("alpha", "rgba", "trimap")

# --------------------------------------------------------------------------- configuration


def config_from_args(args: argparse.Namespace) -> MattingConfig:
    """The method's config from its flags (`add_method_arguments`, and `add_arguments`'
    --no-foreground); a bad value exits (status 2, one line naming the field) before any work."""
    try:
        return _matting_config(args)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc


def _matting_config(args: argparse.Namespace) -> MattingConfig:
    try:
        threshold = args.threshold if args.threshold == "mean" else float(args.threshold)
    except ValueError:
        raise ValueError(f"trimap.threshold: must be a number or 'mean', got {args.threshold!r}") from None
    get_spec(args.backbone)  # an unknown name fails here, listing the known ones
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


def configs_from_args(args: argparse.Namespace) -> tuple[MattingConfig, RuntimeConfig]:
    """The run's configs from its flags: the method's, and how it runs (the runtime flags of
    `extract`, --device shared with the method's CG); a bad value exits (status 2)."""
    cfg = config_from_args(args)
    try:
        runtime = RuntimeConfig(batch_size=args.batch_size, num_actors=args.num_actors, device=args.device,
                                retry_errors=args.retry_errors, address=args.address,
                                max_worker_deaths=args.max_worker_deaths, lease_heartbeat_s=args.lease_heartbeat_s,
                                lease_stale_s=args.lease_stale_s, max_failures=args.max_failures)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    return cfg, runtime


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


# -------------------------------------------------------------------------------- the job


class MatteActor:
    """Ray Data callable: loads the backbone once (when the run needs one: automatic trimaps or
    fusion), mattes each batch (pipeline.batch.matter.ImageMatter) and commits its shards
    through jobs.runner.guarded_batch (poison batches, the run lease); on Ray a decode stage
    (jobs.runner.DecodeActor) has decoded the batch's images already. CG runs on the actor's
    device."""

    def __init__(self, config_json: str, trimaps: list[str] | None, out: str, backbone: bool, device: str,
                 batch_size: int, threads: int, save_layers: bool = False, run_id: str | None = None,
                 max_worker_deaths: int = 2):
        from pipeline.batch.matter import ImageMatter

        runner.set_threads(threads, torch_threads=backbone)
        cfg = MattingConfig.from_dict(json.loads(config_json))
        self.digest = matte_digest(cfg, trimaps)
        self.record_json = canonical_json(matte_record(cfg, trimaps))  # shard metadata: hashes to the digest
        self.out, self.run_id, self.max_deaths, self.attempts = out, run_id, max_worker_deaths, Attempts(out)
        self.matter = ImageMatter(cfg, self.digest, get_spec(cfg.backbone.name).patch_size, device, backbone,
                                  layers_out=out if save_layers else None)

    def __call__(self, batch: dict) -> dict:
        decoded = runner.decoded_items(batch) or {}  # the decode stage's work, on Ray
        items = [MatteItem(ImageRef(str(i), str(u)), decoded.get(str(i)), str(t) or None)
                 for i, u, t in zip(batch["image_id"], batch["uri"], batch["trimap"])]

        def process(part: list[MatteItem]) -> dict:
            rows, errors = self.matter(part)
            return {"rows": rows, "errors": errors}

        def shards(result: dict) -> tuple[str, dict]:
            return shard_name(self.digest, [i.ref.image_id for i in items]), {
                MATTES_DIR: (matte_table(result["rows"]) if result.get("rows") else None, self.record_json),
                ERROR_DIR: (error_table(result["errors"]) if result["errors"] else None, self.record_json)}

        return runner.guarded_batch(self, self.digest, items, process, shards, batch.get(runner.DEFER_COMMIT, False))


def trimaps_for(refs: list[ImageRef], trimaps: list[str] | None) -> dict[str, str | None]:
    """{image_id: its given trimap's URI, or None in automatic mode}. --trimap: nothing, one
    folder (matched by file stem), or one file per image in listing order; ValueError when
    an image has none."""
    if not trimaps:
        return {r.image_id: None for r in refs}
    fs, path = fsspec.core.url_to_fs(trimaps[0])
    if len(trimaps) == 1 and fs.isdir(path):
        by_stem = {_stem(r.uri): r.uri for r in list_images(trimaps[0])}
        missing = [r.image_id for r in refs if _stem(r.uri) not in by_stem]
        if missing:
            raise ValueError(f"no trimap in {trimaps[0]} for {', '.join(missing[:5])}"
                             + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        return {r.image_id: by_stem[_stem(r.uri)] for r in refs}
    if len(trimaps) != len(refs):
        raise ValueError(f"--trimap: {len(trimaps)} files for {len(refs)} images (give one each, or a folder)")
    return {r.image_id: t for r, t in zip(refs, trimaps)}


def run_matte(source: str | None, out: str, cfg: MattingConfig, runtime: RuntimeConfig, refs: list[ImageRef],
              trimaps: list[str] | None = None, local: bool = False, save_layers: bool = False,
              trimap_uris: dict[str, str | None] | None = None) -> dict:
    """Matte every pending image of `refs`, then write the PNG files of OUT from the rows;
    prints progress, returns the run summary (also in OUT/runs/ when there was work). Listing,
    the run and the files happen under OUT's run lease.

    trimaps: --trimap as given (None: automatic mode); trimap_uris: trimaps_for's answer for
    them, when the caller has it already. local: the same MatteActor in this process (no Ray)."""
    started, clock = datetime.now(timezone.utc), time.monotonic()
    out = out.rstrip("/")
    trimaps = [t.rstrip("/") for t in trimaps] if trimaps else None
    trimap_of = trimaps_for(refs, trimaps) if trimap_uris is None else trimap_uris
    digest = matte_digest(cfg, trimaps)
    # The files every row should have: the cut-out unless --no-foreground, the trimap when automatic.
    files = tuple(kind for kind, wanted in zip(FILES, (True, cfg.estimate_foreground, not trimaps)) if wanted)

    def run(lease) -> dict:
        todo, skipped = runner.not_done(refs, out, digest, MATTES_DIR, runtime.retry_errors)
        summary = {"source": source, "out": out, "config_digest": digest, "config": cfg.to_dict(),
                   "trimaps": trimaps or "automatic", "skipped": skipped, "processed": 0, "failed": 0,
                   "errors": []}
        if not todo:
            print(f"nothing to do: all {len(refs)} images already matted in {out} for config {digest}")
            summary["files_written"] = write_files(out, digest, files)[0]
            if summary["files_written"]:
                print(f"wrote {summary['files_written']} missing PNG files in {out} from the rows")
            return summary
        print(f"{len(todo)} images to matte, {skipped} already done for config {digest}")
        batches = [{**b, "trimap": [trimap_of[i] or "" for i in b["image_id"]]}
                   for b in runner.cut_batches(todo, runtime.batch_size)]
        ran: dict = {}
        outcome = runner.drive(batches, len(todo), MatteActor,
                               {"config_json": cfg.to_json(), "trimaps": trimaps, "out": out,
                                "backbone": needs_backbone(cfg, not trimaps), "save_layers": save_layers},
                               runtime, local, "deep-spectral-matte", lease.owner,
                               runner.decode_stage(digest, out, cfg.backbone.name, cfg.backbone.long_side,
                                                   cfg.max_pixels), ran=ran)
        written, infos = write_files(out, digest, files, fresh={i for i, why in outcome.items() if why is None})
        summary.update(files_written=written, seconds_per_image=mean_seconds(infos))
        summary = runner.finish_summary(summary, outcome, started, clock, local, runtime, out, lease, ran)
        print(f"done: {summary['processed']} images matted, {summary['failed']} failed, "
              f"{summary['seconds']} s ({summary['images_per_second']} images/s); rows in {out}/{MATTES_DIR}, "
              f"{written} PNG files in {out}, errors in {out}/{ERROR_DIR}, run summary {summary['run_file']}")
        for err in summary["errors"]:
            print(f"  failed {err['image_id']}: {err['reason']}")
        return summary

    return runner.run_leased(out, runtime, run)


def write_files(out: str, digest: str, files: tuple[str, ...], fresh: set[str] = frozenset(),
                batch_rows: int = 64) -> tuple[int, list[dict]]:
    """OUT/STEM.{alpha,rgba,trimap}.png from the rows of `digest`: every file of the images in
    `fresh` (matted by this run, over what another config left), and of the others the files
    (of kinds `files`) that are missing -> (files written, the info of the fresh rows).
    Streams the rows `batch_rows` at a time; reads only image ids when nothing is missing."""
    fs, root = fsspec.core.url_to_fs(out)
    root = root.rstrip("/")
    fresh_listing(fs, root)
    existing = set(fs.find(root)) if fs.exists(root) else set()

    def path(image_id: str, kind: str) -> str:
        return f"{root}/{file_stem(image_id)}.{kind}.png"

    wanted = [i for i in sorted(finished_ids(out, digest, MATTES_DIR))
              if i in fresh or any(path(i, kind) not in existing for kind in files)]
    written, infos = 0, []
    if not wanted:
        return written, infos
    for batch in scan_batches(out, MATTES_DIR, ["image_id", *FILES, "info"], config_digest=digest,
                              batch_rows=batch_rows, image_ids=wanted):
        for row in batch.to_pylist():
            new = row["image_id"] in fresh
            for kind in FILES:
                target = path(row["image_id"], kind)
                if row[kind] is not None and (new or target not in existing):
                    put_whole(fs, target, row[kind])
                    written += 1
            if new:
                infos.append(json.loads(row["info"]))
    return written, infos


def mean_seconds(infos: list[dict]) -> dict:
    """Mean seconds per stage (the info's seconds_* keys) over the images that have it."""
    keys = sorted({k for info in infos for k in info if k.startswith("seconds_")})
    return {k: round(float(np.mean([info[k] for info in infos if k in info])), 3) for k in keys}


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
    m.add_argument("--device", choices=DEVICES, default=d.device,
                   help="where CG runs (cuda: CuPy); `matte` also places its actors by it (auto: GPUs when "
                        "Ray has some; in this process, --local, the CPU)")
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
    extract.add_source_options(parser)
    parser.add_argument("--out", required=True, help="output folder or fsspec URL")
    parser.add_argument("--trimap", nargs="+", default=None,
                        help="trimap mode: one folder (matched by file stem) or one trimap per image (listing order)")
    parser.add_argument("--no-foreground", action="store_true", help="alpha only, no RGBA cut-out")
    parser.add_argument("--save-layers", action="store_true",
                        help="spectral solver: save the layers as STEM.layers.npy (not kept in the rows)")
    parser.add_argument("--summary", default=None, help="write the run summary JSON here")
    add_method_arguments(parser)
    add_runtime_arguments(parser)


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """RuntimeConfig's flags, named as `extract`'s (--device is the method's, shared), and --local."""
    r = parser.add_argument_group("runtime")
    r.add_argument("--batch-size", type=int, default=RuntimeConfig.batch_size)
    r.add_argument("--num-actors", type=int, default=None, help="default: one per GPU, or one per spare CPU core")
    r.add_argument("--retry-errors", action="store_true", help="retry images recorded as failed")
    r.add_argument("--max-failures", default=RuntimeConfig.max_failures, metavar="N|P%|N,P%",
                   help="failed images the run tolerates before it exits 1: N images, P%% of the run's "
                        "images, or the larger of both (default %(default)s); a run in which every image "
                        "failed always exits 1")
    r.add_argument("--max-worker-deaths", type=int, default=RuntimeConfig.max_worker_deaths,
                   help="worker processes a batch may lose before its images run alone; an image "
                        "alone that loses as many becomes an error row (stage worker)")
    r.add_argument("--lease-heartbeat-s", type=float, default=RuntimeConfig.lease_heartbeat_s,
                   help="how often the driver renews its run lease in OUT")
    r.add_argument("--lease-stale-s", type=float, default=RuntimeConfig.lease_stale_s,
                   help="a lease not renewed for this long is taken over by a new driver")
    r.add_argument("--address", default=None,
                   help="Ray address (default: RAY_ADDRESS, else a new local Ray; 'auto' joins "
                        "a cluster started with `ray start` on this machine)")
    r.add_argument("--local", action="store_true", help="run in this process instead of on Ray")


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
    cfg, runtime = configs_from_args(args)
    try:
        source, refs = extract.images_from_args(args)
        trimap_uris = trimaps_for(refs, args.trimap)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = run_matte(source, args.out, cfg, runtime, refs, args.trimap, local=args.local,
                        save_layers=args.save_layers, trimap_uris=trimap_uris)
    if args.summary:
        with fsspec.open(args.summary, "w") as f:
            json.dump(summary, f, indent=2)
    return runner.exit_status(summary)


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
