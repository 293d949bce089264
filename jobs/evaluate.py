"""Evaluation job: benchmark images -> `deep-spectral label` on them -> the labels it wrote,
scored against ground truth.

    deep-spectral evaluate segmentation --images ecssd/images --masks ecssd/masks --out OUT --json m.json
    deep-spectral evaluate localization --images coco/images --annotations instances.json --out OUT
    deep-spectral evaluate localization --voc-root VOCdevkit/VOC2007 --split trainval --out OUT
    deep-spectral evaluate instances --images coco/images --annotations instances.json --out OUT
    deep-spectral evaluate semantic --images coco/images --masks coco/semantic --label-map map.json --out OUT
    deep-spectral evaluate matting --images am/images --alpha am/alpha --trimaps am/trimap1

The per-image tasks score what users get: jobs.label.run_label (the same actors and shards as
`label`, on Ray by default, in this process with --local) writes the labels of the benchmark's
images to OUT/spectral (or --shards DIR, to share them between runs), and the driver streams
each image's best-scored object from the labels table: its box for CorLoc, its mask (and soft
mask, which segmentation asks label to store) for mIoU and max-F. The driver holds per-image
numbers only. A rerun with the same options labels nothing again; other label options reuse
the eigen rows (and, with --store-features, the forward passes).

`deep-spectral evaluate TASK` dispatches through EVALUATORS (name -> help, flags, run), each
task with its own flags: the per-image tasks of jobs.tasks.TASKS (run here), `instances`
(jobs.evaluate_instances: COCO AP of all objects), `semantic` (jobs.evaluate_semantic, scored
over the whole dataset) and `matting` (jobs.matte). Every task writes the same JSON shape (flat
metrics, n_images, n_failed, seconds_per_image, backbone, config).
"""
from __future__ import annotations


import argparse
import json
import os
import sys
import time
from typing import Callable, Iterator

import numpy as np
import pyarrow.compute as pc
from PIL import Image

from jobs import evaluate_instances, evaluate_semantic, label, matte
from jobs.options import dry_run
from jobs.tasks import TASKS, Result, Task, data_flags
from pipeline.evaluation.panels import GALLERY_DIR, GalleryEntry, gallery_html, panel_name, thumb_name
from pipeline.io.shards import EIGEN_DIR, LABELS_DIR, scan_batches
from pipeline.io.sources import ImageRef
from pipeline.objects.instances import label_digest

# What `deep-spectral evaluate --help` says (the module docstring is for developers).
HELP = """Benchmarks: label or extract the benchmark's images with the same jobs users run, then score
the outputs against ground truth (metrics.json, per-image records, panels).

  deep-spectral evaluate segmentation --images ecssd/images --masks ecssd/masks --out OUT
  deep-spectral evaluate localization --voc-root VOC2007 --split trainval --out OUT
  deep-spectral evaluate instances --images coco/images --annotations instances.json --out OUT
  deep-spectral evaluate semantic --config voc-semantic --voc-root VOC2007 --split Segmentation/trainval --out OUT
  deep-spectral evaluate matting --images am/images --alpha am/alpha --trimaps am/trimap1
"""


def best_objects(shards: str, digest: str, image_ids: list[str], columns: tuple[str, ...]) -> Iterator[dict]:
    """Each labelled image's best-scored object row (object 0) of one label run, streamed."""
    for batch in scan_batches(shards, LABELS_DIR, list(columns), config_digest=digest, image_ids=image_ids):
        yield from batch.filter(pc.equal(batch.column("object"), 0)).to_pylist()


def _stem(image_id: str) -> str:
    return os.path.splitext(image_id)[0]


def _save_png(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _write_outputs(out: str, image_id: str, result: Result) -> None:
    if result.mask is not None:
        _save_png(f"{out}/masks/{_stem(image_id)}.png", result.mask.astype(np.uint8) * 255)
        _save_png(f"{out}/soft/{_stem(image_id)}.png", (result.soft * 255).round().astype(np.uint8))


def _caption(record: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in record.items() if k not in ("box", "image_id"))


def run_evaluate(args: argparse.Namespace) -> dict:
    """Label (or reuse the labels of) the benchmark's images, score each image's best object,
    write outputs; returns the report."""
    task = TASKS[args.task]
    configs = label.configs_from_args(args, PER_IMAGE_OPTIONS)
    cfg, runtime = configs["extract"], configs["runtime"]
    label_cfg = task.label_config(configs["label"])
    if args.dry_run:
        dry_run({**configs, "label": label_cfg}, {"extract": cfg.digest(), "label": label_digest(cfg.digest(), label_cfg)})
        raise SystemExit(0)
    samples = task.samples(args)
    if args.limit:
        samples = samples[:args.limit]
    if not samples:
        raise SystemExit("no images found for these dataset flags")
    out = args.out.rstrip("/")
    shards = args.shards or f"{out}/spectral"
    os.makedirs(out, exist_ok=True)
    started = time.time()
    summary = label.run_label(None, shards, cfg, label_cfg, runtime, [ImageRef(s.image_id, s.uri) for s in samples],
                              local=args.local, gallery=args.panels, coco_annotations=args.annotations)
    label_seconds = time.time() - started

    started = time.time()
    by_id = {s.image_id: s for s in samples}
    digest = summary["config_digest"]
    results, per_image, failed, scored = [], [], [], set()
    for obj in best_objects(shards, digest, sorted(by_id), task.columns):
        image_id = obj["image_id"]
        scored.add(image_id)
        try:
            result = task.evaluate(by_id[image_id], obj)
        except Exception as exc:  # one unreadable mask must not cost the benchmark
            print(f"  failed {image_id}: {type(exc).__name__}: {exc}")
            failed.append(image_id)
            continue
        _write_outputs(out, image_id, result)
        results.append(Result(result.record, curves=result.curves))  # numbers only, not the masks
        per_image.append({"image_id": image_id, **result.record})
    failed += sorted(set(by_id) - scored)  # no labels: label wrote an error row (OUT/errors)
    evaluate_seconds = time.time() - started

    n = len(results)
    weights = next((b.column("weights_digest")[0].as_py() for b in
                    scan_batches(shards, EIGEN_DIR, ["weights_digest"], config_digest=cfg.digest())), None)
    report = {
        "task": task.name,
        **task.summarize(results),
        "n_images": n,
        "n_failed": len(failed),
        # Wall time of this run (labelling what was not already labelled, plus scoring) per
        # evaluated image; n_labelled says how much labelling it includes.
        "seconds_per_image": round((label_seconds + evaluate_seconds) / max(n, 1), 4),
        "n_labelled": summary["processed"] + summary["failed"],
        "label_seconds": round(label_seconds, 2),
        "evaluate_seconds": round(evaluate_seconds, 2),
        "backbone": cfg.backbone.name,
        "weights_digest": weights,
        "config_digest": digest,
        "extract_digest": cfg.digest(),
        "config": {"extract": cfg.to_dict(), "label": label_cfg.to_dict(), "data": data_flags(args),
                   "limit": args.limit, "local": args.local, "shards": shards},
        "instances": summary["instances"]["uri"],
        "failed": failed,
    }
    with open(f"{out}/per_image.jsonl", "w") as f:
        for rec in per_image:
            f.write(json.dumps(rec) + "\n")
    for path in filter(None, [args.json, f"{out}/metrics.json"]):
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
    if args.panels:
        _write_index(out, shards, task, report, per_image)
    print_table(report, task)
    return report


def _write_index(out: str, shards: str, task: Task, report: dict, per_image: list[dict]) -> None:
    """OUT/index.html: the label run's panels of the scored images (their thumbnails, linked
    to the panels), captioned with their numbers; links to metrics.json and per_image.jsonl."""
    gallery = f"{shards}/{GALLERY_DIR}"

    def rel(name: str) -> str:
        return os.path.relpath(f"{gallery}/{name}", out)

    entries = [GalleryEntry(r["image_id"], rel(panel_name(r["image_id"])),
                            rel(thumb_name(r["image_id"])) if os.path.exists(f"{gallery}/{thumb_name(r['image_id'])}")
                            else "", caption=_caption(r))
               for r in per_image if os.path.exists(f"{gallery}/{panel_name(r['image_id'])}")]
    links = [("metrics.json", "metrics.json"), ("per_image.jsonl", "per_image.jsonl")]
    with open(f"{out}/index.html", "w") as f:
        f.write(gallery_html(f"deep-spectral evaluate {task.name}", report, entries, links))


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
    run.add_argument("--shards", default=None, help="shards folder (default OUT/spectral): eigs, and "
                        "for per-image tasks the label run's labels; share it between runs to reuse them")
    run.add_argument("--local", action="store_true", help="extract in this process instead of on Ray")
    if panels:
        run.add_argument("--panels", type=int, nargs="?", const=10 ** 9, default=0,
                         help="label's gallery panels and OUT/index.html: every image, or a fixed sample of N")


PER_IMAGE_OPTIONS = label.OPTIONS


def _per_image_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common_arguments(parser)
    PER_IMAGE_OPTIONS.add_to(parser)


def _semantic_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common_arguments(parser, panels=False)
    evaluate_semantic.add_arguments(parser)


def _exit_code(report: dict) -> int:
    return 0 if report["n_images"] else 1


# Every benchmark `deep-spectral evaluate TASK` knows: name -> (help, its flags, run -> exit code).
# Per-image tasks (jobs.tasks.TASKS) share run_evaluate; semantic is scored over the whole
# dataset at once; matting solves its own Laplacians.
EVALUATORS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    **{t.name: (t.help, _per_image_arguments, lambda args: _exit_code(run_evaluate(args)))
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
