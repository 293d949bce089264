"""Nightly re-extraction in this process: versioned folders, incremental reruns, the manifest."""
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs import cli
from pipeline.config import BackboneConfig, EigenConfig, ExtractConfig
from tests.conftest import SAMPLES


def _tiny_images(folder):
    folder.mkdir()
    for name in ("astronaut.jpg", "coffee.jpg"):
        img = Image.open(SAMPLES / name)
        img.thumbnail((84, 84))  # a 6 x 6 patch grid at most: seconds of CPU, not minutes
        img.save(folder / name)
    (folder / "text.jpg").write_text("not an image at all")  # one error row


def _files(folder):
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_mtime_ns)
                  for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")


def test_nightly_versions_reruns_and_manifest(tmp_path, offline_weights, capsys):
    images, root = tmp_path / "images", tmp_path / "nightly"
    _tiny_images(images)
    argv = ["nightly", str(images), "--out-root", str(root), "--local", "--long-side", "84", "--eigenvectors", "4"]
    cfg = ExtractConfig(backbone=BackboneConfig(long_side=84), eigen=EigenConfig(k=4))
    version = f"dinov2_vits14_offline-{cfg.digest()}"

    assert cli.main(argv) == 0
    assert sorted(pq.read_table(root / version / "eigs").column("image_id").to_pylist()) == \
        ["astronaut.jpg", "coffee.jpg"]
    manifest = json.loads((root / "manifest.json").read_text())
    entry = manifest["versions"][version]
    assert entry["backbone"] == "dinov2_vits14_offline" and entry["config_digest"] == cfg.digest()
    assert entry["config"] == json.loads(cfg.to_json())
    assert (entry["images"], entry["failed"], entry["errors"]["count"]) == (2, 1, 1)
    assert [(e["image_id"], e["stage"]) for e in entry["errors"]["first"]] == [("text.jpg", "decode")]
    [run] = entry["runs"]
    assert (run["processed"], run["failed"], run["skipped"]) == (2, 1, 0)
    assert run["images_per_s"] > 0 and run["started"] <= run["ended"] == manifest["updated"]
    assert run["source"] == str(images)
    assert not list(root.glob("_tmp-*"))  # the manifest's temporary file was renamed away

    # The next night finds nothing new: no shard is written, and the manifest says so.
    before = _files(root)
    assert cli.main(argv) == 0
    assert _files(root) == before
    entry = json.loads((root / "manifest.json").read_text())["versions"][version]
    assert [(r["processed"], r["failed"], r["skipped"]) for r in entry["runs"]] == [(2, 1, 0), (0, 0, 3)]
    assert entry["runs"][1]["images_per_s"] == 0.0 and entry["images"] == 2

    # Another configuration is another version, beside the first.
    assert cli.main(argv[:-1] + ["3"]) == 0
    versions = json.loads((root / "manifest.json").read_text())["versions"]
    assert len(versions) == 2 and {p.name for p in root.iterdir() if p.is_dir()} == set(versions)
    assert "2 images, 1 failed, 1 run(s)" in capsys.readouterr().out


def test_nightly_rejects_flags_that_do_not_fit(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["nightly", "--dataset", "coco", "--root", str(tmp_path), "--out-root", str(tmp_path)])
    assert exited.value.code == 2
    assert "needs annotations" in capsys.readouterr().err
    assert not (tmp_path / "manifest.json").exists()


def test_a_crashed_run_is_recorded_then_raised(tmp_path):
    images, root = tmp_path / "images", tmp_path / "nightly"
    _tiny_images(images)
    missing = tmp_path / "no_such_weights.safetensors"
    with pytest.raises(FileNotFoundError):
        cli.main(["nightly", str(images), "--out-root", str(root), "--local", "--weights", str(missing)])
    [(version, entry)] = json.loads((root / "manifest.json").read_text())["versions"].items()
    assert version == f"dinov2_vits14_offline-{entry['config_digest']}"
    [run] = entry["runs"]
    assert run["error"].startswith("FileNotFoundError") and "processed" not in run
    assert (entry["backbone"], entry["images"]) == ("dinov2_vits14_offline", 0)


def test_an_unknown_backbone_is_refused_before_any_work(tmp_path, capsys):
    images, root = tmp_path / "images", tmp_path / "nightly"
    _tiny_images(images)
    with pytest.raises(SystemExit) as exited:
        cli.main(["nightly", str(images), "--out-root", str(root), "--local", "--backbone", "no/such"])
    assert exited.value.code == 2 and "unknown backbone 'no/such'" in capsys.readouterr().err
    assert not root.exists()