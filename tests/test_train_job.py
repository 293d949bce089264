"""`deep-spectral train` and `label --detector` end to end: a label run of the samples, a detector
trained on it with Ray Train on a local cluster (checkpoint, reuse, rounds), and a label run that
uses it on local Ray over the samples plus a corrupt file, whose instances.json a training script
reads with torchvision's CocoDetection."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import BackboneConfig, EigenConfig, ExtractConfig, RuntimeConfig
from pipeline.detection.train import DetectorConfig
from pipeline.io.sources import list_images
from pipeline.objects.discovery import DiscoveryConfig
from pipeline.objects.instances import LabelConfig
from tests.conftest import SAMPLES, samples_with_a_corrupt_file

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

# Tiny and fast; score_threshold 0 so that an undertrained detector still returns detections.
TINY = DetectorConfig(epochs=2, batch_size=2, pyramid_channels=32, head_convs=1, score_threshold=0.0,
                      max_detections=5)


def mtimes(folder):
    return sorted((str(p), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file() and "_ray" not in p.parts)


@pytest.fixture(scope="module")
def label_run(tmp_path_factory, offline_weights):
    """The samples labelled in-process with stored features (what `train` learns from)."""
    from jobs.label import run_label

    root = tmp_path_factory.mktemp("train")
    cfg = ExtractConfig(backbone=BackboneConfig(long_side=224), eigen=EigenConfig(k=6), store_features=True)
    label_cfg = LabelConfig(discovery=DiscoveryConfig(max_objects=3))
    summary = run_label(str(SAMPLES), str(root / "labels"), cfg, label_cfg, RuntimeConfig(batch_size=4),
                        list_images(str(SAMPLES)), local=True, gallery=0)
    assert summary["processed"] == 4
    return root, cfg


def test_train_on_ray_then_label_with_the_detector(local_ray, label_run, tmp_path, capsys):
    import torch
    import torchvision
    from torchvision.ops import box_iou
    from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

    from jobs.label import run_label
    from jobs.train import run_train
    from pipeline.detection.checkpoint import resolve

    root, cfg = label_run
    det = tmp_path / "detector"
    summary = run_train(str(root / "labels"), str(det), TINY, RuntimeConfig())
    (round1,) = summary["rounds"]
    assert round1["trained"] and round1["round"] == 1
    record = json.loads((det / round1["digest"] / "detector.json").read_text())
    assert record["images"] == 4 and record["label_digest"] == summary["label_digest"]
    assert [h["epoch"] for h in record["history"]] == [1, 2] and all(h["mask"] > 0 for h in record["history"])
    # Ray Train kept its per-epoch checkpoints beside the round folder.
    assert any((det / "_ray").rglob("state.pt"))
    assert resolve(str(det)) == str(det / round1["digest"])

    # A rerun with the same label run and settings reuses the round: nothing is written again.
    before = mtimes(det / round1["digest"])
    again = run_train(str(root / "labels"), str(det), TINY, RuntimeConfig(), local=True)
    assert not again["rounds"][0]["trained"] and "reusing" in capsys.readouterr().out
    assert mtimes(det / round1["digest"]) == before

    # label --detector on local Ray over the samples and a corrupt file.
    folder = samples_with_a_corrupt_file(tmp_path / "images")
    out = tmp_path / "out"
    label_cfg = LabelConfig(discovery=DiscoveryConfig(max_objects=3), detector=resolve(str(det)))
    result = run_label(str(folder), str(out), cfg, label_cfg, RuntimeConfig(batch_size=3),
                       list_images(str(folder)), gallery=5)
    assert (result["processed"], result["failed"]) == (4, 1)
    assert [e["image_id"] for e in pq.read_table(out / "errors").to_pylist()] == ["corrupt.jpg"]
    rows = pq.read_table(out / "labels").to_pylist()
    assert {r["image_id"] for r in rows} == {p.name for p in SAMPLES.glob("*.jpg")}
    assert {(r["source"], r["round"], r["method"]) for r in rows} == {("cut", 0, "iterative"),
                                                                       ("detector", 1, "detector")}
    # Each image: its cuts, then the detections that overlap none of its cuts, ranked after them.
    for name in {r["image_id"] for r in rows}:
        mine = sorted((r for r in rows if r["image_id"] == name), key=lambda r: r["object"])
        cuts = [r for r in mine if r["source"] == "cut"]
        found = [r for r in mine if r["source"] == "detector"]
        assert mine == cuts + found and 1 <= len(cuts) <= 3 and len(found) <= TINY.max_detections
        assert [r["score"] for r in found] == sorted((r["score"] for r in found), reverse=True)
        positive = [r for r in cuts if r["score"] > 0]
        if positive and found:
            assert max(r["score"] for r in found) <= min(r["score"] for r in positive)
            overlap = box_iou(torch.tensor([r["box"] for r in found]), torch.tensor([r["box"] for r in positive]))
            assert float(overlap.max()) < 0.5
    assert sum(r["source"] == "detector" for r in rows) >= 4
    rerun = run_label(str(folder), str(out), cfg, label_cfg, RuntimeConfig(batch_size=3), list_images(str(folder)))
    assert rerun["processed"] == 0

    # What a training script does with instances.json: torchvision's CocoDetection, wrapped for
    # transforms v2: boxes as XYXY tensors, masks decoded, each mask's area the annotation's area.
    coco_dataset = CocoDetection(str(folder), str(out / "instances.json"))
    dataset = wrap_dataset_for_transforms_v2(coco_dataset, target_keys={"image_id", "boxes", "masks", "labels"})
    coco = coco_dataset.coco
    assert len(dataset) == 4
    seen = 0
    for image, target in dataset:
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=target["image_id"]))
        assert isinstance(target["boxes"], torchvision.tv_tensors.BoundingBoxes)
        assert target["masks"].shape[1:] == image.size[::-1]
        assert len(target["boxes"]) == len(target["masks"]) == len(annotations) >= 1
        areas = target["masks"].flatten(1).sum(1).tolist()
        assert areas == [a["area"] for a in annotations]
        x0, y0, x1, y1 = target["boxes"].unbind(1)
        assert bool(((x1 >= x0) & (y1 >= y0)).all())
        seen += len(annotations)
    assert seen == len(rows)
    assert len(list((out / "gallery" / "panels").glob("*.png"))) == 4


def test_rounds_train_on_the_merged_detections_and_are_reused(label_run, tmp_path, capsys):
    from jobs.train import run_train

    root, _ = label_run
    det = tmp_path / "detector"
    two = DetectorConfig(**{**TINY.__dict__, "rounds": 2, "round_score": 0.0, "epochs": 1})
    summary = run_train(str(root / "labels"), str(det), two, RuntimeConfig(), local=True)
    first, second = summary["rounds"]
    record = json.loads((det / second["digest"] / "detector.json").read_text())
    assert record["round"] == 2 and record["previous"] == str(det / first["digest"])
    targets = pq.read_table(det / second["digest"] / "targets").to_pylist()
    # round_score 0: every detection of round 1 (max_detections per image) joins round 2's targets.
    per_image = {}
    for t in targets:
        per_image[t["image_id"]] = per_image.get(t["image_id"], 0) + 1
    assert len(per_image) == 4 and min(per_image.values()) >= 1
    assert json.loads((det / "final.json").read_text())["digest"] == second["digest"]
    # A third round reuses the first two.
    capsys.readouterr()
    three = run_train(str(root / "labels"), str(det), DetectorConfig(**{**two.__dict__, "rounds": 3}),
                      RuntimeConfig(), local=True)
    assert [r["trained"] for r in three["rounds"]] == [False, False, True]
    assert np.all([r["digest"] for r in three["rounds"][:2]] == [first["digest"], second["digest"]])
