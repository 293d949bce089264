"""`deep-spectral evaluate` end to end on real benchmark images (in-process extraction)."""
import json
import re
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
    assert report["config"]["label"]["refine"] == "guided" and report["config"]["label"]["soft_masks"]
    assert report["config"]["extract"]["graph"]["knn_lambda"] == 0
    mask = np.asarray(Image.open(out / "masks" / "0001.png"))
    assert mask.shape == np.asarray(Image.open(ecssd / "masks" / "0001.png")).shape
    assert set(np.unique(mask)) <= {0, 255}
    assert len(list((shards / "gallery" / "panels").glob("*.png"))) == 2
    assert "miou" in (out / "index.html").read_text()

    # What was scored is what label wrote: the best object's mask in the labels table.
    from pipeline.io.coco_instances import decode_mask
    from pipeline.io.shards import LABELS_DIR, read_table
    objects = [r for r in read_table(str(shards), LABELS_DIR).to_pylist()
               if r["image_id"] == "0001.jpg" and r["object"] == 0]
    assert len(objects) == 1 and objects[0]["soft"] is not None
    assert np.array_equal(decode_mask(objects[0]["segmentation"], *mask.shape), mask == 255)

    # The same options again: nothing is labelled, the same figures come back.
    assert main(argv) == 0
    again = json.loads((tmp_path / "m.json").read_text())
    assert again["n_labelled"] == 0 and again["miou"] == report["miou"] and again["max_f"] == report["max_f"]

    # Refinement off: a new label run over the same eigen rows, a different (plausible) result.
    argv[argv.index("--json") + 1] = str(tmp_path / "raw.json")
    assert main(argv + ["--refine", "none", "--limit", "5"]) == 0
    raw = json.loads((tmp_path / "raw.json").read_text())
    assert raw["n_labelled"] == 5 and raw["n_images"] == 5 and raw["n_failed"] == 0
    assert raw["config"]["label"]["refine"] == "none" and 0.5 < raw["miou"] != report["miou"]


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
    # Its boxes are label's: OUT/spectral/instances.json, scorable by pycocotools (COCO ids).
    from pycocotools.coco import COCO
    instances = COCO(str(out / "spectral" / "instances.json"))
    assert set(instances.getImgIds()) == {9, 25, 30, 34}
    best = {a["image_id"]: a for a in instances.loadAnns(instances.getAnnIds()) if a["rank"] == 0}
    assert all(0 <= a["score"] <= 1 and len(a["bbox"]) == 4 for a in best.values())
    assert len(list((out / "spectral" / "gallery" / "panels").glob("*.png"))) == 4
    # OUT/index.html: the label run's thumbnails, lazy-loaded, linked to its panels; every link resolves.
    page = (out / "index.html").read_text()
    assert page.count('loading="lazy"') == 4 and page.count('src="spectral/gallery/thumbs/') == 4
    links = re.findall(r'(?:href|src)="([^"]*)"', page)
    assert len(links) == 2 + 2 * 4 and all((out / link).is_file() for link in links), links
    per_image = [json.loads(line) for line in (out / "per_image.jsonl").read_text().splitlines()]
    assert sum(r["correct"] for r in per_image) / 4 == report["corloc"]
