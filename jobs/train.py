"""Train job: a label run's objects -> a class-agnostic detector with masks (CutLER's self-training),
on Ray Train.

    deep-spectral train LABEL_OUT --out DETECTOR            # Ray Train (a local Ray unless RAY_ADDRESS)
    deep-spectral label SOURCE --out OUT2 --store-features --detector DETECTOR

Learns from the stored patch features of LABEL_OUT/eigs (the label run must have stored them)
and its objects in LABEL_OUT/labels, with no ground truth. Each round is one TorchTrainer run:
its workers (one per GPU, or CPU workers) stream their share of the shards (pipeline.detection.dataset),
report losses and a checkpoint each epoch to Ray Train (a failed worker resumes from it), and rank
0 writes the round's folder DETECTOR/<digest> (pipeline.detection.checkpoint). Round r > 1 first
predicts with round r-1 and trains on its confident detections merged with the cuts. A rerun
with the same inputs reuses every finished round.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone

import fsspec
import torch

from jobs.extract import add_running_options
from jobs.label import instances_source, object_rows
from jobs.options import Flag, Options, dry_run, write_summary
from pipeline.config import ExtractConfig, RuntimeConfig
from pipeline.detection.checkpoint import (TARGETS_DIR, detector_digest, images_digest, read_checkpoint,
                                           read_record, round_uri, write_checkpoint, write_final)
from pipeline.detection.dataset import epoch_batches, samples, shard_groups
from pipeline.detection.samples import detected_objects, round_objects
from pipeline.detection.train import DetectorConfig, detect, new_model, train
from pipeline.io.runlog import RUNS_DIR
from pipeline.io.schema import detection_table
from pipeline.io.shards import EIGEN_DIR, shard_files, write_shard

HELP = """A label run's objects -> a class-agnostic detector with masks, trained on Ray Train.

  deep-spectral train LABEL_OUT [LABEL_OUT ...] --out DETECTOR
  deep-spectral label SOURCE --out OUT2 --store-features --detector DETECTOR

LABEL_OUT is the output of `deep-spectral label ... --store-features` (its stored patch features
and objects; no annotation is read). The detector (FCOS with a mask head on a simple feature
pyramid over the frozen ViT's patch grid) ignores the loss where no object was cut, so it can
find objects the cuts missed, and with --rounds N retrains on its own confident detections.
DETECTOR gets one folder per round (model.pt, detector.json) named by its settings' digest and
final.json; a rerun with the same label run and settings reuses them.
"""

TRAIN_FLAGS = [
    Flag("detector.epochs", "passes over the label run's images per round"),
    Flag("detector.rounds", "self-training rounds (round r > 1 learns from round r-1's confident detections)"),
    Flag("detector.lr", "AdamW learning rate"),
    Flag("detector.batch_size", "images per training step (per worker)"),
    Flag("runtime.num_actors", "training workers (none: one per GPU, else one)", name="--workers"),
    Flag("runtime.device", "where the workers run", choices=("auto", "cpu", "cuda")),
    Flag("runtime.address", "Ray address (none: RAY_ADDRESS, else a new local Ray)"),
]
OPTIONS = Options({"detector": DetectorConfig, "runtime": RuntimeConfig}, TRAIN_FLAGS)


def find_label_run(out: str, digest: str | None = None) -> tuple[str, ExtractConfig]:
    """LABEL_OUT -> (the label run's digest, its extraction config): the digest given, else the one
    LABEL_OUT/instances.json was written from; the config from that run's summary in LABEL_OUT/runs."""
    out = out.rstrip("/")
    if digest is None:
        source = instances_source(out)
        if source is None:
            raise ValueError(f"{out}: no instances.json, not a `deep-spectral label` output (or pass --label-digest)")
        digest = source["config_digest"]
    fs, root = fsspec.core.url_to_fs(out)
    runs = sorted(fs.glob(f"{root}/{RUNS_DIR}/*-{digest}.json"))
    if not runs:
        raise ValueError(f"{out}: no run summary of label run {digest} in {RUNS_DIR}/")
    with fs.open(runs[-1], "r") as f:
        cfg = ExtractConfig.from_dict(json.load(f)["config"])
    if not cfg.store_features:
        raise ValueError(f"{out}: label run {digest} did not store patch features; rerun it with --store-features")
    return digest, cfg


def cut_objects(out: str, digest: str, most: int = 0) -> dict[str, list[dict]]:
    """{image id: its objects with a positive score ({"box", "segmentation"}), the `most` best
    (0: all)} of a label run, every image of the run listed (one whose objects all scored 0, the
    frame or the fallback, has none)."""
    objects: dict[str, list[dict]] = {}
    for row in object_rows(out, digest, ["image_id", "object", "box", "segmentation", "score"]):
        found = objects.setdefault(row["image_id"], [])
        if row["score"] > 0 and (not most or row["object"] < most):  # "object" is the place by score
            found.append({"box": row["box"], "segmentation": row["segmentation"]})
    return objects


def train_round(spec: dict) -> None:
    """One round, in a Ray Train worker (spec["ray"]) or in this process: the share of the shards of
    this worker, the round's targets (the cuts, or the previous round's detections merged with
    them), the epochs, and on rank 0 the round folder."""
    cfg = DetectorConfig(**spec["config"])
    rank, world, device, resume = 0, 1, torch.device(spec.get("device", "cpu")), None
    if spec["ray"]:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        rank, world, device = context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device()
        if ray.train.get_checkpoint() is not None:
            with ray.train.get_checkpoint().as_directory() as folder:
                resume = torch.load(os.path.join(folder, "state.pt"), map_location="cpu")
    groups = [tuple(g) for g in spec["groups"]][rank::world]
    objects = spec["objects"]
    if spec["previous"]:
        objects = next_round_targets(spec, groups, objects, rank)
    first = next(samples(groups[:1], spec["extract_digest"], {}, spec["long_side"]))
    in_channels, patch_size = first[1][0].shape[0], first[2]
    model = new_model(in_channels, patch_size, cfg)
    if resume is not None:
        model.load_state_dict(resume["model"])
    model.to(device)
    if spec["ray"] and world > 1:
        import ray.train.torch

        model = ray.train.torch.prepare_model(model)
    history: list[dict] = list(resume["history"]) if resume else []
    clock = time.monotonic()

    def after_epoch(epoch: int, losses: dict, optimizer) -> None:
        history.append({"epoch": epoch + 1, **losses})
        print(f"round {spec['round']} epoch {epoch + 1}/{cfg.epochs}: " +
              ", ".join(f"{k} {v:.4f}" for k, v in losses.items()), flush=True)
        if spec["ray"]:
            import ray.train

            with tempfile.TemporaryDirectory() as folder:
                checkpoint = None
                if rank == 0:
                    torch.save({"model": _unwrapped(model).state_dict(), "optimizer": optimizer.state_dict(),
                                "epoch": epoch + 1, "history": history}, os.path.join(folder, "state.pt"))
                    checkpoint = ray.train.Checkpoint.from_directory(folder)
                ray.train.report({"epoch": epoch + 1, **losses}, checkpoint=checkpoint)

    # DistributedDataParallel needs every worker to take the same number of steps: the fewest any
    # worker's share of the images makes (the rest of the others' shares waits for the next epoch).
    shares = [sum(len(ids) for _, ids in spec["groups"][r::world]) for r in range(world)]
    steps = min(-(-n // cfg.batch_size) for n in shares)

    def batches(epoch: int):
        return itertools.islice(epoch_batches(groups, spec["extract_digest"], objects, spec["long_side"],
                                              cfg.batch_size, cfg.seed, epoch), steps)

    train(model, batches, cfg, after_epoch, device=device, start_epoch=resume["epoch"] if resume else 0,
          optimizer_state=resume["optimizer"] if resume else None, log_every=50)
    if rank == 0:
        record = {**spec["record"], "config": spec["config"], "workers": world, "device": str(device),
                  "seconds": round(time.monotonic() - clock, 1), "history": history}
        write_checkpoint(spec["uri"], _unwrapped(model).cpu(), in_channels, patch_size, record)


def _unwrapped(model):
    return getattr(model, "module", model)


def next_round_targets(spec: dict, groups, cuts: dict[str, list[dict]], rank: int) -> dict[str, list[dict]]:
    """Round r's targets for this worker's images: round r-1's detections scoring at least
    round_score, and the cuts they do not cover; also written to the round folder (DETECTION_SCHEMA)."""
    cfg = DetectorConfig(**spec["config"])
    model, _ = read_checkpoint(spec["previous"])
    targets: dict[str, list[dict]] = {}
    rows = []
    for image_id, (features, _), _cell in samples(groups, spec["extract_digest"], {}, spec["long_side"]):
        detection = detect(model, [features])[0]
        confident = detection["scores"] >= cfg.round_score  # only these can join: paste no others
        found = detected_objects({k: v[confident] for k, v in detection.items()}, spec["rows"][image_id],
                                 spec["long_side"])
        targets[image_id] = round_objects(cuts.get(image_id, []), found, cfg.round_score)
        rows += [{"image_id": image_id, "object": i, "box": o["box"], "segmentation": o["segmentation"],
                  "config_digest": spec["digest"]} for i, o in enumerate(targets[image_id])]
    if rows:
        write_shard(detection_table(rows), spec["uri"], TARGETS_DIR, json.dumps(spec["record"]),
                    name=f"part-{rank:04d}.parquet")
    return targets


def image_rows(out: str, extract_digest: str, ids: list[str]) -> dict[str, dict]:
    """{image id: the row fields that place it (sizes and grid), without features} of the label run."""
    from pipeline.io.shards import scan_batches

    wanted = set(ids)
    rows = {}
    for batch in scan_batches(out, EIGEN_DIR, ["image_id", "height", "width", "input_height", "input_width",
                                               "grid_h", "grid_w"], config_digest=extract_digest):
        rows.update({r["image_id"]: r for r in batch.to_pylist() if r["image_id"] in wanted})
    return rows


def run_train(label_outs: list[str] | str, det: str, cfg: DetectorConfig, runtime: RuntimeConfig,
              local: bool = False, label_digest: str | None = None) -> dict:
    """Every round not yet in DETECTOR, learnt from one label run or several (of one extraction
    config: the same features); returns the run summary (also DETECTOR/runs/)."""
    started, clock = datetime.now(timezone.utc), time.monotonic()
    label_outs = [label_outs] if isinstance(label_outs, str) else list(label_outs)
    det = det.rstrip("/") if "://" in det else os.path.abspath(det)
    cuts: dict[str, list[dict]] = {}
    shards: dict[str, str] = {}
    digests, extract_cfg = [], None
    for label_out in label_outs:
        digest, run_cfg = find_label_run(label_out.rstrip("/"), label_digest)
        if extract_cfg is not None and run_cfg.digest() != extract_cfg.digest():
            raise ValueError(f"{label_out}: extraction {run_cfg.digest()} differs from {label_outs[0]}'s "
                             f"{extract_cfg.digest()}: a detector learns from one kind of features")
        extract_cfg = run_cfg
        found = cut_objects(label_out.rstrip("/"), digest, cfg.max_targets)
        twice = sorted(set(found) & set(cuts))
        if twice:
            raise ValueError(f"{label_out}: image {twice[0]!r} is in two label runs (ids must be unique)")
        cuts.update(found)
        shards.update({i: uri for i, uri in shard_files(label_out.rstrip("/"), run_cfg.digest(), EIGEN_DIR).items()
                       if i in found})
        digests.append(digest)
    if not shards:
        raise ValueError(f"{', '.join(label_outs)}: no labelled images with stored features")
    label_digest = "+".join(digests)
    images = images_digest(list(shards))
    print(f"training on {len(shards)} images of label run {label_digest} "
          f"({sum(len(v) for v in cuts.values())} objects)")
    summary = {"label_out": label_outs, "label_digest": label_digest, "extract_digest": extract_cfg.digest(),
               "images": len(shards), "detector_config": cfg.__dict__, "rounds": []}
    previous = None
    rows = {}
    for label_out in label_outs if cfg.rounds > 1 else []:
        rows.update(image_rows(label_out.rstrip("/"), extract_cfg.digest(), list(shards)))
    for round_ in range(1, cfg.rounds + 1):
        digest = detector_digest(cfg, label_digest, images, round_)
        uri = round_uri(det, digest)
        if read_record(uri) is not None:
            print(f"round {round_}: reusing {uri}")
            summary["rounds"].append({"round": round_, "digest": digest, "uri": uri, "trained": False})
            previous = uri
            continue
        record = {"digest": digest, "round": round_, "label_out": label_outs, "label_digest": label_digest,
                  "extract_digest": extract_cfg.digest(), "images": len(shards), "images_digest": images,
                  "previous": previous}
        spec = {"config": cfg.__dict__, "round": round_, "digest": digest, "uri": uri, "previous": previous,
                "groups": shard_groups(shards), "objects": cuts, "rows": rows if previous else {},
                "extract_digest": extract_cfg.digest(), "long_side": extract_cfg.backbone.long_side,
                "record": record, "ray": not local}
        print(f"round {round_}: training {uri} ({cfg.epochs} epochs)")
        round_clock = time.monotonic()
        if local:
            train_round({**spec, "device": "cuda" if runtime.device == "cuda" else "cpu"})
        else:
            fit_on_ray(spec, runtime, det)
        summary["rounds"].append({"round": round_, "digest": digest, "uri": uri, "trained": True,
                                  "seconds": round(time.monotonic() - round_clock, 1)})
        previous = uri
    final = read_record(previous)
    summary.update(final=write_final(det, final["digest"], final), seconds=round(time.monotonic() - clock, 1),
                   started=started.isoformat(timespec="seconds"), config_digest=final["digest"])
    fs, root = fsspec.core.url_to_fs(det)
    fs.makedirs(f"{root}/{RUNS_DIR}", exist_ok=True)
    with fs.open(f"{root}/{RUNS_DIR}/{started:%Y%m%dT%H%M%S}Z-{final['digest']}.json", "w") as f:
        json.dump(summary, f, indent=2)
    print(f"done: {len(summary['rounds'])} rounds, detector {summary['final']}, {summary['seconds']} s")
    return summary


def fit_on_ray(spec: dict, runtime: RuntimeConfig, det: str) -> None:
    """One round as a TorchTrainer run: runtime.num_actors workers (default one per GPU, else
    one), each on one GPU or a CPU; Ray Train keeps its per-epoch checkpoints under
    DETECTOR/_ray/<digest> and restarts failed workers from the last one."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(address=runtime.address or os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = runtime.device == "cuda" or (runtime.device == "auto" and gpus > 0)
    workers = runtime.num_actors or (gpus if use_gpu else 1)
    cpus = max(0.5, min(1.0, ray.available_resources().get("CPU", 1.0) - 0.5))
    storage = det if "://" in det else os.path.abspath(det)
    trainer = TorchTrainer(
        train_round, train_loop_config=spec,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(name=f"_ray/{spec['digest']}", storage_path=storage,
                             failure_config=FailureConfig(max_failures=2)))
    trainer.fit()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("label_out", metavar="LABEL_OUT", nargs="+",
                        help="output of `deep-spectral label --store-features`; several: learn from all (one "
                             "extraction config, unique image names)")
    parser.add_argument("--out", required=True, help="detector folder or fsspec URL")
    parser.add_argument("--label-digest", default=None,
                        help="which label run of LABEL_OUT (default: the one its instances.json holds)")
    add_running_options(parser)
    OPTIONS.add_to(parser)


def main(args: argparse.Namespace) -> int:
    configs = OPTIONS.configs(args)
    cfg, runtime = configs["detector"], configs["runtime"]
    if args.dry_run:
        return dry_run(configs, {})
    try:
        for label_out in args.label_out:
            find_label_run(label_out, args.label_digest)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    summary = run_train(args.label_out, args.out, cfg, runtime, local=args.local, label_digest=args.label_digest)
    write_summary(args.summary, summary)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m jobs.train", description=HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
