"""`deep-spectral evaluate` end to end on real benchmark images (in-process extraction)."""
import json
import shutil

import numpy as np
from PIL import Image

from jobs.cli import main
from tests.conftest import shared_data

KEYS = {"task", "n_images", "n_failed", "seconds_per_image", "backbone", "weights_digest", "config"}


def test_segmentation_on_ecssd(tmp_path, offline_weights):
    ecssd = shared_data("ecssd")
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    for n in ["0001", "0002", "0003", "0004", "0005"]:
        shutil.copy(ecssd / "images" / f"{n}.jpg", images)
        shutil.copy(ecssd / "masks" / f"{n}.png", masks)
    (images / "0006.jpg").write_bytes((ecssd / "images" / "0006.jpg").read_bytes()[:2000])  # truncated
    shutil.copy(ecssd / "masks" / "0006.png", masks)
    out, shards = tmp_path / "out", tmp_path / "shards"
    argv = ["evaluate", "segmentation", "--images", str(images), "--masks", str(masks), "--local",
            "--out", str(out), "--shards", str(shards), "--json", str(tmp_path / "m.json"), "--panels", "2"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert KEYS | {"miou", "accuracy", "max_f"} <= set(report)
    assert (report["n_images"], report["n_failed"], report["failed"]) == (5, 1, ["0006.jpg"])
    assert report["miou"] > 0.6 and report["accuracy"] > 0.85 and report["max_f"] > 0.7
    assert 0 < report["seconds_per_image"] < 60
    assert report["backbone"] == "dinov2_vits14_offline"
    assert report["config"]["task"]["refine"] == "guided" and report["config"]["extract"]["graph"]["knn_lambda"] == 0
    mask = np.asarray(Image.open(out / "masks" / "0001.png"))
    assert mask.shape == np.asarray(Image.open(ecssd / "masks" / "0001.png")).shape
    assert set(np.unique(mask)) <= {0, 255}
    assert len(list((out / "panels").glob("*.png"))) == 2
    assert "miou" in (out / "index.html").read_text()

    # Refinement off: the same shards, no new extraction, a different (plausible) result.
    argv[argv.index("--json") + 1] = str(tmp_path / "raw.json")
    assert main(argv + ["--no-refine", "--limit", "5"]) == 0
    raw = json.loads((tmp_path / "raw.json").read_text())
    assert raw["n_extracted"] == 0 and raw["n_images"] == 5 and raw["n_failed"] == 0
    assert raw["config"]["task"]["refine"] == "none" and raw["miou"] > 0.5


def test_localization_on_coco(tmp_path, offline_weights):
    coco = shared_data("coco128")
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((coco / "images").glob("*.jpg"))[:4]:
        shutil.copy(p, images)
    out = tmp_path / "out"
    assert main(["evaluate", "localization", "--images", str(images), "--annotations",
                 str(coco / "instances_train2017.json"), "--local", "--out", str(out),
                 "--json", str(tmp_path / "loc.json"), "--panels"]) == 0
    report = json.loads((tmp_path / "loc.json").read_text())
    assert KEYS | {"corloc"} <= set(report)
    assert report["n_images"] == 4 and report["n_failed"] == 0 and 0.25 <= report["corloc"] <= 1
    dets = json.loads((out / "detections.json").read_text())
    assert {d["image_id"] for d in dets} == {9, 25, 30, 34}
    assert all(len(d["bbox"]) == 4 and 0 < d["score"] <= 1 for d in dets)
    assert len(list((out / "panels").glob("*.png"))) == 4
