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
from jobs.options import Flag, Options, dry_run, write_summary
from pipeline.batch.matter import MatteItem, file_stem, load_backbone, needs_backbone
from pipeline.config import RuntimeConfig, canonical_json
from pipeline.evaluation.matting_metrics import matting_errors
from pipeline.features.registry import get_spec
from pipeline.io.attempts import Attempts
from pipeline.io.images import decode_image
from pipeline.io.schema import error_table, matte_table
from pipeline.io.shards import ERROR_DIR, MATTES_DIR, finished_ids, scan_batches, shard_name
from pipeline.io.sources import ImageRef, list_images, read_bytes
from pipeline.io.storage import fresh_listing, put_whole
from pipeline.matting.config import SOLVERS, MattingConfig, matte_digest, matte_record
from pipeline.matting.matte import matte
from pipeline.matting.trimap import read_trimap, split

# What `deep-spectral matte --help` says (the module docstring is for developers).
HELP = """Images -> soft alpha mattes and RGBA cut-outs.

  deep-spectral matte SOURCE --out OUT                      # automatic trimaps from the graph
  deep-spectral matte SOURCE --out OUT --trimap TRIMAP_DIR  # given trimaps, matched by file stem

OUT gets STEM.alpha.png, STEM.rgba.png (straight alpha) and, with automatic trimaps,
STEM.trimap.png; mattes/ (one Parquet row per image with the same PNGs), errors/ and runs/. A
rerun skips every image already matted with the same settings and rewrites missing files.
"""

MODES = ("auto", "trimap", "pymatting_cf")
# The PNG files written from the rows: each is OUT/STEM.<kind>.png from MATTE_SCHEMA's column <kind>.
FILES = ("alpha", "rgba", "trimap")

# --------------------------------------------------------------------------- configuration


MATTE_FLAGS = [
    Flag("matte.solver", "cg: constrained solve of the matting Laplacian; spectral: its smallest eigenvectors as "
         "layers", choices=tuple(SOLVERS)),
    Flag("matte.max_side", "solve at this long side at most and upsample alpha (none: full size)", metavar="PX"),
    Flag("matte.estimate_foreground", "also estimate the foreground colours: the RGBA cut-out", "--foreground"),
    Flag("matte.backbone.name", "the backbone of the automatic trimap (`deep-spectral backbones`)", "--backbone"),
    Flag("matte.backbone.long_side", "the backbone's input long side (none: native size)", "--long-side", metavar="PX"),
]
OPTIONS = Options({"matte": MattingConfig, "runtime": RuntimeConfig}, MATTE_FLAGS + extract.RUNTIME_FLAGS)
EVALUATE_OPTIONS = Options({"matte": MattingConfig}, MATTE_FLAGS)


def configs_from_args(args: argparse.Namespace, options: Options = OPTIONS) -> dict:
    """The run's configs from --config, flags and --set; a bad value, or an unknown backbone,
    exits (status 2, one line naming the setting) before any work."""
    configs = options.configs(args)
    try:
        get_spec(configs["matte"].backbone.name)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    return configs


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
        runner.print_failures(summary)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    extract.add_source_options(parser)
    parser.add_argument("--out", required=True, help="output folder or fsspec URL")
    parser.add_argument("--trimap", nargs="+", default=None,
                        help="trimap mode: one folder (matched by file stem) or one trimap per image (listing order)")
    parser.add_argument("--save-layers", action="store_true",
                        help="spectral solver: save the layers as STEM.layers.npy (not kept in the rows)")
    extract.add_running_options(parser)
    OPTIONS.add_to(parser)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="folder of images")
    parser.add_argument("--alpha", required=True, help="folder of ground-truth alphas (matched by stem)")
    parser.add_argument("--trimaps", default=None, help="folder of trimaps: solve with them (mode trimap) "
                        "and score their unknown region; without: automatic trimaps, whole image scored")
    parser.add_argument("--mode", choices=MODES, default=None)
    parser.add_argument("--json", default=None, help="write the metrics JSON here")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--per-image", action="store_true", help="include per-image errors in the JSON")
    EVALUATE_OPTIONS.add_to(parser)


def main(args: argparse.Namespace) -> int:
    configs = configs_from_args(args)
    cfg, runtime = configs["matte"], configs["runtime"]
    if args.dry_run:
        return dry_run(configs, {"matte": cfg.digest()})
    try:
        source, refs = extract.images_from_args(args)
        trimap_uris = trimaps_for(refs, args.trimap)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    summary = run_matte(source, args.out, cfg, runtime, refs, args.trimap, local=args.local,
                        save_layers=args.save_layers, trimap_uris=trimap_uris)
    write_summary(args.summary, summary)
    return runner.exit_status(summary)


def main_evaluate(args: argparse.Namespace) -> int:
    configs = configs_from_args(args, EVALUATE_OPTIONS)
    if args.dry_run:
        return dry_run(configs, {})
    cfg = configs["matte"]
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
