"""Evaluation job: benchmark images -> the extraction pipeline's shards -> masks / boxes -> metrics.

    deep-spectral evaluate segmentation --images ecssd/images --masks ecssd/masks --out OUT --json m.json
    deep-spectral evaluate localization --images coco/images --annotations instances.json --out OUT
    deep-spectral evaluate localization --voc-root VOCdevkit/VOC2007 --split trainval --out OUT
    deep-spectral evaluate semantic --images coco/images --masks coco/semantic --label-map map.json --out OUT
    deep-spectral evaluate matting --images am/images --alpha am/alpha --trimaps am/trimap1

Eigenvectors come from jobs.extract.run_extract (the same ExtractActor as `extract`) written as
shards to OUT/spectral (or --shards DIR, to share them between runs): on Ray by default, in
this process with --local (no cluster: the simplest on a small machine). A rerun with the same
extraction options reuses the shards, so refinement variants cost no extraction.

`deep-spectral evaluate TASK` dispatches through EVALUATORS (name -> help, flags, run), each
task with its own flags: the per-image tasks of jobs.tasks.TASKS (dataset readers, per-image
evaluation, summary; run here), `semantic` (jobs.evaluate_semantic, scored over the whole
dataset) and `matting` (jobs.matte). Every task writes the same JSON shape (flat metrics,
n_images, n_failed, seconds_per_image, backbone, config).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Callable

import numpy as np
import pyarrow.compute as pc
from PIL import Image

from jobs import evaluate_instances, evaluate_semantic, extract, matte
from jobs.tasks import TASKS, Item, Result, Task, data_flags, extract_samples
from pipeline.io.ground_truth import Sample
from pipeline.features.geometry import geometry_of
from pipeline.io.images import decode_image
from pipeline.objects.localize import coco_detections, write_coco_results
from pipeline.evaluation.panels import gallery_html, render_panel
from pipeline.io.schema import EIGEN_SCHEMA
from pipeline.io.shards import EIGEN_DIR, read_table
from pipeline.io.sources import read_bytes


# ------------------------------------------------------------------------------- shards


def _read_rows(shards: str, digest: str, wanted: set[str]) -> dict[str, tuple[dict, np.ndarray]]:
    """image_id -> (scalar columns, flat eigenvectors) for this config's rows in `shards`."""
    # Never read stored features: they are ~25x the eigenvectors' bytes and unused here.
    table = read_table(shards, EIGEN_DIR, columns=[n for n in EIGEN_SCHEMA.names if n != "features"])
    if table is None:
        return {}
    table = table.filter(pc.equal(table.column("config_digest"), digest))
    scalars = table.select([c for c in table.column_names
                            if c not in ("eigenvectors", "eigenvalues")]).to_pylist()
    vectors = table.column("eigenvectors").combine_chunks() if table.num_rows else None
    out = {}
    for i, row in enumerate(scalars):
        if row["image_id"] in wanted:
            out[row["image_id"]] = (row, vectors[i].values.to_numpy(zero_copy_only=False))
    return out


def _item(sample: Sample, row: dict, flat: np.ndarray, long_side: int | None, max_pixels: int) -> Item:
    eigenvectors = flat.astype(np.float32).reshape(row["k"], row["grid_h"], row["grid_w"])
    image = decode_image(read_bytes(sample.uri), max_pixels)
    return Item(sample, row, image, eigenvectors, geometry_of(row, long_side))


# ------------------------------------------------------------------------------ outputs


def _stem(image_id: str) -> str:
    return os.path.splitext(image_id)[0]


def _save_png(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _write_outputs(out: str, item: Item, result: Result) -> None:
    stem = _stem(item.sample.image_id)
    if result.mask is not None:
        _save_png(f"{out}/masks/{stem}.png", result.mask.astype(np.uint8) * 255)
        _save_png(f"{out}/soft/{stem}.png", (result.soft * 255).round().astype(np.uint8))


def _panel(out: str, item: Item, result: Result) -> tuple[str, str]:
    stem = _stem(item.sample.image_id)
    caption = f"{item.sample.image_id}: " + ", ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
        for k, v in result.record.items() if k != "box")
    mask = result.mask if result.mask is not None else result.overlay
    panel = render_panel(item.image, item.eigenvectors, item.geom, mask=mask,
                         gt_mask=result.gt_mask, pred_boxes=result.boxes, gt_boxes=result.gt_boxes,
                         title=item.sample.image_id)
    os.makedirs(os.path.dirname(f"{out}/panels/{stem}.png"), exist_ok=True)
    panel.save(f"{out}/panels/{stem}.png")
    return f"panels/{stem}.png", caption


# ---------------------------------------------------------------------------------- run


def run_evaluate(args: argparse.Namespace) -> dict:
    """Extract (or reuse) the shards, evaluate every image, write outputs; returns the report."""
    task = TASKS[args.task]
    task_cfg = task.config(args)
    cfg, runtime = extract.configs_from_args(args)
    samples = task.samples(args)
    if args.limit:
        samples = samples[:args.limit]
    if not samples:
        raise SystemExit("no images found for these dataset flags")
    out, shards, summary, extract_seconds = extract_samples(args, cfg, runtime, samples)
    rows = _read_rows(shards, cfg.digest(), {s.image_id for s in samples})

    started = time.time()
    results, detections, panels, per_image, failed = [], [], [], [], []
    n_panels = args.panels
    weights_digest = None
    for sample in samples:
        if sample.image_id not in rows:
            failed.append(sample.image_id)
            continue
        row, flat = rows[sample.image_id]
        weights_digest = row["weights_digest"]
        try:
            item = _item(sample, row, flat, cfg.backbone.long_side, cfg.max_pixels)
            result = task.evaluate(item, task_cfg)
        except Exception as exc:  # one unreadable mask must not cost the benchmark
            print(f"  failed {sample.image_id}: {type(exc).__name__}: {exc}")
            failed.append(sample.image_id)
            continue
        results.append(result)
        per_image.append({"image_id": sample.image_id, **result.record})
        _write_outputs(out, item, result)
        if result.boxes is not None:
            detections += coco_detections(sample.coco_id if sample.coco_id is not None else sample.image_id,
                                          result.boxes, result.scores)
        if len(panels) < n_panels:
            panels.append(_panel(out, item, result))
    evaluate_seconds = time.time() - started

    n = len(results)
    report = {
        "task": task.name,
        **task.summarize(results),
        "n_images": n,
        "n_failed": len(failed),
        # Wall time of this run (extraction of what was not already in the shards, plus
        # evaluation) per evaluated image; n_extracted says how much extraction it includes.
        "seconds_per_image": round((extract_seconds + evaluate_seconds) / max(n, 1), 4),
        "n_extracted": summary["processed"] + summary["failed"],
        "extract_seconds": round(extract_seconds, 2),
        "evaluate_seconds": round(evaluate_seconds, 2),
        "backbone": cfg.backbone.name,
        "weights_digest": weights_digest,
        "config_digest": cfg.digest(),
        "config": {"extract": cfg.to_dict(), "task": dataclasses.asdict(task_cfg),
                   "data": data_flags(args), "limit": args.limit, "local": args.local,
                   "shards": shards},
        "failed": failed,
    }
    with open(f"{out}/per_image.jsonl", "w") as f:
        for rec in per_image:
            f.write(json.dumps(rec) + "\n")
    if detections:
        write_coco_results(f"{out}/detections.json", detections)
    for path in filter(None, [args.json, f"{out}/metrics.json"]):
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
    if panels:
        with open(f"{out}/index.html", "w") as f:
            f.write(gallery_html(f"deep-spectral evaluate {task.name}", report, panels))
    print_table(report, task)
    return report


def print_table(report: dict, task: Task) -> None:
    cols = ["task", *task.metrics, "n_images", "n_failed", "seconds_per_image", "backbone"]
    cells = [f"{report[c]:.4f}" if isinstance(report[c], float) else str(report[c]) for c in cols]
    widths = [max(len(c), len(v)) for c, v in zip(cols, cells)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join(v.ljust(w) for v, w in zip(cells, widths)))


def _add_common_arguments(parser: argparse.ArgumentParser, panels: bool = True) -> None:
    """Data, outputs and extraction flags of every benchmark that extracts eigenvectors."""
    data = parser.add_argument_group("data (one of: --images + --masks, --images + --annotations, --voc-root)")
    data.add_argument("--images", help="folder of images")
    data.add_argument("--masks", help="folder of ground-truth masks matched by file stem")
    data.add_argument("--annotations", help="COCO instances JSON (boxes; iscrowd ignored)")
    data.add_argument("--voc-root", help="PASCAL VOC year folder, e.g. VOCdevkit/VOC2007")
    data.add_argument("--split", default="trainval", help="VOC split (ImageSets/Main, or Segmentation for semantic)")
    data.add_argument("--limit", type=int, default=0, help="only the first N images (sorted by id)")
    run = parser.add_argument_group("outputs and running")
    run.add_argument("--out", required=True, help="folder for outputs and metrics.json")
    run.add_argument("--json", default=None, help="also write the metrics JSON here")
    run.add_argument("--shards", default=None, help="eigenvector shards folder (default OUT/spectral); "
                                                     "share it between runs to reuse extraction")
    run.add_argument("--local", action="store_true", help="extract in this process instead of on Ray")
    if panels:
        run.add_argument("--panels", type=int, nargs="?", const=10 ** 9, default=0,
                         help="write per-image panels and OUT/index.html (all images, or the first N)")
    extract.add_extract_options(parser.add_argument_group("extraction (as `deep-spectral extract`)"))


def _per_image_arguments(task: Task) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        _add_common_arguments(parser)
        method = parser.add_argument_group("method")
        method.add_argument("--threshold", default=None,
                            help="Fiedler threshold: a number or 'mean' (default: 0 for boxes, mean for masks)")
        if task.add_arguments:
            task.add_arguments(method)
    return add


def _semantic_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common_arguments(parser, panels=False)
    evaluate_semantic.add_arguments(parser.add_argument_group("method"))


def _exit_code(report: dict) -> int:
    return 0 if report["n_images"] else 1


# Every benchmark `deep-spectral evaluate TASK` knows: name -> (help, its flags, run -> exit code).
# Per-image tasks (jobs.tasks.TASKS) share run_evaluate; semantic is scored over the whole
# dataset at once; matting solves its own Laplacians.
EVALUATORS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    **{t.name: (t.help, _per_image_arguments(t), lambda args: _exit_code(run_evaluate(args)))
       for t in TASKS.values()},
    "instances": ("multi-object discovery: class-agnostic COCO AP/AR of boxes and masks (pycocotools)",
                  evaluate_instances.add_arguments, lambda args: _exit_code(evaluate_instances.run(args))),
    "semantic": ("semantic segmentation: mIoU after Hungarian matching, mean ± std over seeds",
                 _semantic_arguments, lambda args: _exit_code(evaluate_semantic.run(args))),
    "matting": ("matting: SAD, MSE and gradient error against ground-truth alpha",
                matte.add_evaluate_arguments, matte.main_evaluate),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    for name, (help_, add, _) in EVALUATORS.items():
        add(tasks.add_parser(name, help=help_, description=help_))


def main(args: argparse.Namespace) -> int:
    return EVALUATORS[args.task][2](args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
