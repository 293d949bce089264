"""Dataset listers for extraction: VOC, COCO (+ COCO20k id lists), folders, globs, memory://."""
import argparse
import json
import uuid

import fsspec
import numpy as np
import pytest
from PIL import Image

from jobs import extract
from pipeline.io.ground_truth import coco_boxes
from pipeline.io.dataset_listing import dataset_images
from pipeline.io.sources import iter_images, read_bytes
from tests.conftest import shared_data


def _jpeg(path, size=(16, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(path)


def _ids(refs):
    return [r.image_id for r in refs]


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for name in ("2008_000001", "2008_000002", "2008_000003"):
        _jpeg(root / "JPEGImages" / f"{name}.jpg")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("2008_000001\n2008_000003\n")
    (root / "ImageSets" / "Main" / "cat_train.txt").write_text("2008_000001 -1\n")  # per-class file
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2008_000002\n\n")
    return root


def test_voc_main_and_segmentation_splits(voc):
    refs = list(dataset_images("voc", str(voc), split="train"))
    assert _ids(refs) == ["JPEGImages/2008_000001.jpg", "JPEGImages/2008_000003.jpg"]
    assert read_bytes(refs[0].uri) == (voc / "JPEGImages" / "2008_000001.jpg").read_bytes()
    assert _ids(dataset_images("voc", str(voc), split="Segmentation/val")) == ["JPEGImages/2008_000002.jpg"]


def test_voc_bad_split_and_root_say_what_exists(voc):
    with pytest.raises(FileNotFoundError, match="splits there: train, Segmentation/val"):
        dataset_images("voc", str(voc))  # the default, trainval, is not in this tree
    with pytest.raises(FileNotFoundError, match="not a VOC year folder"):
        dataset_images("voc", str(voc.parent), split="train")
    with pytest.raises(ValueError, match="Main|Segmentation"):
        dataset_images("voc", str(voc), split="Layout/train")


@pytest.fixture
def coco(tmp_path):
    for name in ("000000000009.jpg", "000000000025.jpg", "000000000030.jpg"):
        _jpeg(tmp_path / "coco" / "train2017" / name)
    data = {"info": {"description": "synthetic"},
            "images": [{"id": 25, "file_name": "000000000025.jpg", "width": 16, "height": 12},
                       {"id": 9, "file_name": "000000000009.jpg", "width": 16, "height": 12}],
            "annotations": [{"id": 1, "image_id": 9, "bbox": [1, 2, 3, 4], "iscrowd": 0,
                             "segmentation": [[1, 2, 4, 2, 4, 6]]},
                            {"id": 2, "image_id": 25, "bbox": [0, 0, 8, 6], "iscrowd": 1,
                             "segmentation": {"counts": [0, 48], "size": [12, 16]}}],
            "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "coco" / "instances.json").write_text(json.dumps(data))
    return tmp_path / "coco"


def test_coco_lists_the_json_images_by_file_name(coco):
    refs = list(dataset_images("coco", str(coco), split="train2017", annotations=str(coco / "instances.json")))
    assert _ids(refs) == ["000000000009.jpg", "000000000025.jpg"]  # 30 is not in the JSON
    assert read_bytes(refs[1].uri) == (coco / "train2017" / "000000000025.jpg").read_bytes()
    # Same ids as the evaluation reader, so evaluate --shards reuses what extraction wrote.
    assert _ids(refs) == [s.image_id for s in coco_boxes(str(coco / "train2017"), str(coco / "instances.json"))]


def test_coco20k_id_list(coco):
    ids = coco / "coco_20k_filenames.txt"
    ids.write_text("train2017/000000000030.jpg\n# a comment\n\n000000000009.jpg\n")
    refs = list(dataset_images("coco", str(coco / "train2017"), image_ids=str(ids)))
    assert _ids(refs) == ["000000000030.jpg", "000000000009.jpg"]  # the list's order
    assert read_bytes(refs[0].uri) == (coco / "train2017" / "000000000030.jpg").read_bytes()

    ids.write_text("25\n000000000009.jpg\n")  # numeric ids are looked up in the JSON
    refs = list(dataset_images("coco", str(coco / "train2017"), annotations=str(coco / "instances.json"),
                               image_ids=str(ids)))
    assert _ids(refs) == ["000000000025.jpg", "000000000009.jpg"]


def test_coco_inputs_that_cannot_work(coco):
    ids = coco / "ids.txt"
    ids.write_text("25\n")
    with pytest.raises(ValueError, match="line 1: numeric COCO id 25 needs annotations"):
        list(dataset_images("coco", str(coco / "train2017"), image_ids=str(ids)))
    ids.write_text("000000000030.jpg\n")
    with pytest.raises(ValueError, match="000000000030.jpg is not in the annotations"):
        list(dataset_images("coco", str(coco), annotations=str(coco / "instances.json"), image_ids=str(ids)))
    with pytest.raises(ValueError, match="needs annotations .* and/or image_ids"):
        dataset_images("coco", str(coco))
    (coco / "other.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a COCO annotations file"):
        dataset_images("coco", str(coco), annotations=str(coco / "other.json"))


def test_folder_glob_and_unknown_options(coco):
    folder = coco / "train2017"
    assert _ids(dataset_images("folder", str(folder))) == ["000000000009.jpg", "000000000025.jpg",
                                                           "000000000030.jpg"]
    assert _ids(dataset_images("folder", str(folder / "*2[05].jpg"))) == ["000000000025.jpg"]
    assert _ids(dataset_images("folder", str(coco / "**" / "*09.jpg"))) == ["train2017/000000000009.jpg"]
    with pytest.raises(ValueError, match="does not take split"):
        dataset_images("folder", str(folder), split="train")
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        dataset_images("imagenet", str(folder))


def test_memory_tree_coco_and_folder():
    fs = fsspec.filesystem("memory")
    root = f"/bucket-{uuid.uuid4().hex}"
    try:
        fs.pipe(f"{root}/val2017/a.jpg", b"A")
        fs.pipe(f"{root}/val2017/deep/b.png", b"B")
        fs.pipe(f"{root}/val2017/notes.md", b"not an image")
        fs.pipe(f"{root}/ann.json", json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}]}).encode())
        refs = list(dataset_images("folder", f"memory://{root}/val2017"))
        assert _ids(refs) == ["a.jpg", "deep/b.png"]
        assert [read_bytes(r.uri) for r in refs] == [b"A", b"B"]
        refs = list(dataset_images("coco", f"memory://{root}", split="val2017", annotations=f"memory://{root}/ann.json"))
        assert [(r.image_id, read_bytes(r.uri)) for r in refs] == [("a.jpg", b"A")]
    finally:
        fs.rm(root, recursive=True)


def test_folder_listing_is_lazy_directory_by_directory(tmp_path):
    """A subfolder is listed only when the walk reaches it: a file added there after the
    first item was taken still appears (an eager listing would have missed it)."""
    _jpeg(tmp_path / "a.jpg")
    (tmp_path / "later").mkdir()
    refs = iter_images(str(tmp_path))
    assert next(refs).image_id == "a.jpg"
    _jpeg(tmp_path / "later" / "new.jpg")
    assert _ids(refs) == ["later/new.jpg"]


def test_coco128_listed_with_the_coco_reader():
    root = shared_data("coco128")
    refs = list(dataset_images("coco", str(root / "images"), annotations=str(root / "instances_train2017.json")))
    assert len(refs) == 128 and refs[0].image_id == "000000000009.jpg"
    assert _ids(refs) == [s.image_id for s in coco_boxes(str(root / "images"), str(root / "instances_train2017.json"))]


def _cli(argv):
    parser = argparse.ArgumentParser()
    extract.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("argv, message", [
    ([], "give SOURCE .* or --dataset NAME --root URI"),
    (["imgs", "--root", "x"], "not both"),
    (["imgs", "--dataset", "coco"], "not both"),
    (["--dataset", "voc"], "--dataset voc needs --root"),
])
def test_extract_flags_that_do_not_fit(argv, message):
    with pytest.raises(ValueError, match=message):
        extract.images_from_args(_cli(argv + ["--out", "o"]))


def test_extract_cli_lists_a_dataset(voc, tmp_path):
    source, refs = extract.images_from_args(_cli(["--dataset", "voc", "--root", str(voc), "--split", "train",
                                                  "--out", str(tmp_path / "o")]))
    assert source == f"voc {voc} split=train" and len(refs) == 2
    with pytest.raises(FileNotFoundError, match="no images found"):
        extract.images_from_args(_cli([str(tmp_path / "VOCdevkit" / "*.png"), "--out", "o"]))
