"""`deep-spectral label` end to end on a local Ray cluster: objects, COCO instances, gallery,
bad files, reruns; then a second label run that reuses the stored features."""
import json
import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import BackboneConfig, EigenConfig, ExtractConfig, RuntimeConfig
from pipeline.io.coco_instances import decode_mask, stable_image_id
from pipeline.io.schema import OBJECT_SCHEMA
from pipeline.io.sources import list_images
from pipeline.objects.discovery import DiscoveryConfig
from pipeline.objects.instances import LabelConfig
from tests.conftest import SAMPLES, samples_with_a_corrupt_file

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray


def listing(folder):
    return sorted((str(p), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file())


def test_label_writes_objects_instances_gallery_and_reruns_as_noop(local_ray, tmp_path, offline_weights):
    from pycocotools.coco import COCO

    from jobs.label import gallery_ids, run_label

    folder = samples_with_a_corrupt_file(tmp_path / "images")
    out = tmp_path / "out"
    cfg = ExtractConfig(backbone=BackboneConfig(long_side=224), eigen=EigenConfig(k=6), store_features=True)
    label_cfg = LabelConfig(discovery=DiscoveryConfig(max_objects=3))
    runtime = RuntimeConfig(batch_size=3)
    refs = list_images(str(folder))
    summary = run_label(str(folder), str(out), cfg, label_cfg, runtime, refs, gallery=2)
    assert (summary["processed"], summary["failed"]) == (4, 1)

    labels = pq.read_table(out / "labels")
    assert labels.schema.remove_metadata().equals(OBJECT_SCHEMA)
    rows = labels.to_pylist()
    names = sorted(p.name for p in SAMPLES.glob("*.jpg"))
    assert sorted({r["image_id"] for r in rows}) == names
    for name in names:
        mine = sorted((r for r in rows if r["image_id"] == name), key=lambda r: r["object"])
        assert 1 <= len(mine) <= 3 and [r["object"] for r in mine] == list(range(len(mine)))
        assert [r["score"] for r in mine] == sorted((r["score"] for r in mine), reverse=True)
        assert any(r["rank"] == 0 for r in mine)  # the Fiedler object is always there
    errors = pq.read_table(out / "errors").to_pylist()
    assert [e["image_id"] for e in errors] == ["corrupt.jpg"]
    assert errors[0]["config_digest"] == summary["config_digest"]
    assert sorted(pq.read_table(out / "eigs").column("image_id").to_pylist()) == names

    # instances.json: loads with pycocotools; its RLE masks are the masks written.
    coco = COCO(str(out / "instances.json"))
    assert len(coco.getImgIds()) == 4 and len(coco.getAnnIds()) == len(rows)
    by_key = {(stable_image_id(r["image_id"]), round(r["score"], 6), r["rank"]): r for r in rows}
    for ann in coco.loadAnns(coco.getAnnIds()):
        row = by_key[(ann["image_id"], ann["score"], ann["rank"])]
        mask = coco.annToMask(ann).astype(bool)
        assert np.array_equal(mask, decode_mask(row["segmentation"], row["height"], row["width"]))
        assert mask.sum() == ann["area"] == row["area"] > 0
        x, y, w, h = ann["bbox"]
        rows_, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert (x, y, x + w, y + h) == pytest.approx((cols[0], rows_[0], cols[-1] + 1, rows_[-1] + 1), abs=0.01)

    # Gallery: a fixed-seed sample of 2 of the 5 listed images (a failed one has no panel),
    # linked from index.html.
    sampled = gallery_ids(refs, 2)
    assert len(sampled) == 2 and gallery_ids(refs, 2) == sampled
    panels = sorted(p.name for p in (out / "gallery" / "panels").iterdir())
    assert panels == sorted(i.replace(".jpg", ".png") for i in sampled if i != "corrupt.jpg")
    page = (out / "gallery" / "index.html").read_text()
    assert all(f"panels/{p}" in page for p in panels)
    # The page shows each panel's thumbnail, lazy-loaded, linked to the full panel; every link
    # (run summary, instances.json, panels, thumbnails) is a file that exists; the captions
    # carry each object's place by score and score, as the labels table has them.
    images = re.findall(r"<img [^>]*>", page)
    assert len(images) == len(panels) and all('loading="lazy"' in img for img in images)
    assert sorted(re.findall(r'src="([^"]*)"', page)) == [f"thumbs/{p.replace('.png', '.jpg')}" for p in panels]
    links = re.findall(r'(?:href|src)="([^"]*)"', page)
    assert {"../instances.json", "../runs/" + summary["run_file"].rsplit("/", 1)[1]} <= set(links)
    assert len(links) == 2 + 2 * len(panels)
    for link in links:
        assert (out / "gallery" / link).resolve().is_file(), link
    for name in sorted(i for i in sampled if i != "corrupt.jpg"):
        mine = sorted((r for r in rows if r["image_id"] == name), key=lambda r: r["object"])
        caption = re.search(rf'<figcaption><p title="{re.escape(name)}">.*?</figcaption>', page).group(0)
        assert re.findall(r">(#\d+ [\d.]+)</b>", caption) == [f"#{r['object'] + 1} {r['score']:.2f}" for r in mine]

    before = listing(out)
    again = run_label(str(folder), str(out), cfg, label_cfg, runtime, refs, gallery=2)
    assert (again["skipped"], again["processed"], again["failed"]) == (5, 0, 0)
    assert listing(out) == before

    # Another label config over the same OUT reuses the stored features: no new eigen rows.
    other = LabelConfig(discovery=DiscoveryConfig(method="fiedler"))
    third = run_label(str(folder), str(out), cfg, other, RuntimeConfig(batch_size=4), refs, local=True, gallery=0)
    assert (third["processed"], third["failed"]) == (4, 1)
    assert len(pq.read_table(out / "eigs")) == 4
    fiedler = [r for r in pq.read_table(out / "labels").to_pylist() if r["config_digest"] == third["config_digest"]]
    assert len(fiedler) == 4 and all(r["rank"] == 0 for r in fiedler)
    first = {r["image_id"]: r for r in rows if r["rank"] == 0}
    for r in fiedler:  # same cut from stored features as from the forward pass
        assert r["segmentation"] == first[r["image_id"]]["segmentation"]
    instances = json.loads((out / "instances.json").read_text())
    assert len(instances["annotations"]) == 4

    # Back to the first config: nothing to label, and instances.json is that config's again
    # (it was the fiedler run's).
    from jobs.label import instances_source
    back = run_label(str(folder), str(out), cfg, label_cfg, RuntimeConfig(batch_size=4), refs, local=True, gallery=0)
    assert (back["processed"], back["skipped"]) == (0, 5)
    assert instances_source(str(out))["config_digest"] == summary["config_digest"]
    assert len(json.loads((out / "instances.json").read_text())["annotations"]) == len(rows)


def test_label_self_train_fits_one_head_on_a_sample_predicts_with_it_and_reruns_without_refitting(
        local_ray, tmp_path, offline_weights):
    from jobs.label import run_label
    from pipeline.batch.head_fitting import head_sample, head_uri
    from pipeline.features.geometry import geometry_of
    from pipeline.io.schema import eigenvectors_of, features_of
    from pipeline.objects.discovery import fiedler_objects
    from pipeline.objects.localize import mask_box
    from pipeline.objects.self_training import Head, fit_head, head_mask

    folder = tmp_path / "images"
    folder.mkdir()
    for img in SAMPLES.glob("*.jpg"):
        shutil.copy(img, folder / img.name)
    out = tmp_path / "out"
    cfg = ExtractConfig(backbone=BackboneConfig(long_side=224), eigen=EigenConfig(k=6), store_features=True)
    label_cfg = LabelConfig(discovery=DiscoveryConfig(max_objects=2), self_train=True, head_images=3)
    refs = list_images(str(folder))
    with pytest.raises(ValueError, match="store-features"):
        run_label(str(folder), str(out), ExtractConfig(), label_cfg, RuntimeConfig(), refs)

    summary = run_label(str(folder), str(out), cfg, label_cfg, RuntimeConfig(batch_size=2), refs, gallery=0)
    assert (summary["processed"], summary["failed"]) == (4, 0)
    head_info = summary["head"]
    assert head_info["fitted"] and head_info["uri"] == head_uri(str(out), summary["config_digest"])
    stored = json.loads((out / "heads" / f"{summary['config_digest']}.json").read_text())
    head = Head.from_dict(stored["head"])

    # The head is the one fitted to the Fiedler objects of the 3 sampled rows, refitted here.
    eig_rows = {r["image_id"]: r for r in pq.read_table(out / "eigs").to_pylist()}
    assert len(eig_rows) == 4  # extracted once, before fitting; the label actors wrote none again
    sample = head_sample(sorted(eig_rows), label_cfg)
    assert len(sample) == 3 and set(sample) < set(eig_rows)
    feats = [features_of(eig_rows[i]) for i in sample]
    targets = [fiedler_objects(eigenvectors_of(eig_rows[i]), np.asarray(eig_rows[i]["eigenvalues"]), None,
                               label_cfg.discovery)[0].mask for i in sample]
    again = fit_head(feats, targets, label_cfg.head_config())
    np.testing.assert_allclose(head.weight, again.weight, rtol=1e-4, atol=1e-5)
    assert stored["images"] == head_info["images"] == 3

    # Each image's first-found object is the head's mask of its stored features.
    rows = pq.read_table(out / "labels").to_pylist()
    assert all(r["config_digest"] == summary["config_digest"] for r in rows)
    for image_id, eig in eig_rows.items():
        first = [r for r in rows if r["image_id"] == image_id and r["rank"] == 0]
        assert len(first) == 1
        cells = head_mask(head, features_of(eig))
        assert first[0]["grid_area"] == pytest.approx(cells.mean())
        assert first[0]["patch_box"] == pytest.approx(mask_box(cells, geometry_of(eig, 224)).tolist())

    # An interrupted run (one labels shard lost) resumes with the stored head, not a new fit,
    # and the labels end as they were: one row per (image, object), none twice.
    shards = sorted((out / "labels").glob("*.parquet"))
    lost = set(pq.read_table(shards[0]).column("image_id").to_pylist())
    shards[0].unlink()
    head_file = out / "heads" / f"{summary['config_digest']}.json"
    mtime = head_file.stat().st_mtime_ns
    resumed = run_label(str(folder), str(out), cfg, label_cfg, RuntimeConfig(batch_size=2), refs,
                        local=True, gallery=0)
    assert resumed["processed"] == len(lost) and resumed["head"]["fitted"] is False
    assert head_file.stat().st_mtime_ns == mtime
    after = pq.read_table(out / "labels").to_pylist()
    keys = [(r["image_id"], r["object"]) for r in after]
    assert len(keys) == len(set(keys)) and sorted(keys) == sorted((r["image_id"], r["object"]) for r in rows)
    assert len(pq.read_table(out / "eigs")) == 4
    noop = run_label(str(folder), str(out), cfg, label_cfg, RuntimeConfig(), refs, local=True, gallery=0)
    assert (noop["processed"], noop["skipped"]) == (0, 4) and "head" not in noop
