"""Benchmark readers: folder pairs, COCO JSON and a synthetic PASCAL VOC tree."""
import json

import numpy as np
from PIL import Image

from pipeline.io.ground_truth import coco_boxes, folder_pairs, read_mask, voc_boxes
from tests.conftest import shared_data


def _image(path, size=(8, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(path)


def test_folder_pairs_match_by_stem_and_read_any_nonzero_as_foreground(tmp_path):
    for name in ["a.jpg", "b.png", "sub/c.jpg", "nomask.jpg"]:
        _image(tmp_path / "images" / name)
    (tmp_path / "masks" / "sub").mkdir(parents=True)
    Image.fromarray(np.array([[0, 1], [0, 0]], np.uint8)).save(tmp_path / "masks" / "a.png")
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).save(tmp_path / "masks" / "b.png")
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[1, 1, 2] = 7
    Image.fromarray(rgb).save(tmp_path / "masks" / "sub" / "c.png")
    samples = folder_pairs(str(tmp_path / "images"), str(tmp_path / "masks"))
    assert [s.image_id for s in samples] == ["a.jpg", "b.png", "sub/c.jpg"]
    assert read_mask(samples[0].mask_uri).tolist() == [[False, True], [False, False]]
    assert read_mask(samples[1].mask_uri).sum() == 2
    assert read_mask(samples[2].mask_uri).tolist() == [[False, False], [False, True]]


def test_coco_reader_ignores_crowd_and_converts_xywh(tmp_path):
    for name in ["1.jpg", "2.jpg"]:
        _image(tmp_path / "images" / name)
    data = {"images": [{"id": 11, "file_name": "2.jpg"}, {"id": 10, "file_name": "1.jpg"},
                       {"id": 12, "file_name": "missing.jpg"}],
            "annotations": [{"image_id": 10, "bbox": [1, 2, 3, 4], "iscrowd": 0},
                            {"image_id": 10, "bbox": [0, 0, 8, 6], "iscrowd": 1},
                            {"image_id": 10, "bbox": [5, 5, 1, 1]}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    samples = coco_boxes(str(tmp_path / "images"), str(tmp_path / "ann.json"))
    assert [(s.image_id, s.coco_id) for s in samples] == [("1.jpg", 10), ("2.jpg", 11)]
    np.testing.assert_array_equal(samples[0].boxes, [[1, 2, 4, 6], [5, 5, 6, 6]])
    assert samples[1].boxes.shape == (0, 4)  # an image without objects


def test_coco128_reader_on_the_real_file():
    root = shared_data("coco128")
    samples = coco_boxes(str(root / "images"), str(root / "instances_train2017.json"))
    assert len(samples) == 128
    assert sum(len(s.boxes) == 0 for s in samples) == 2  # the two images without labels
    first = samples[0]
    assert first.image_id == "000000000009.jpg" and first.coco_id == 9
    assert np.all(first.boxes[:, 2:] > first.boxes[:, :2])


VOC_XML = """<annotation><folder>VOC2007</folder><filename>{name}.jpg</filename>
<size><width>8</width><height>6</height><depth>3</depth></size>
{objects}</annotation>"""
VOC_OBJECT = """<object><name>{cls}</name><difficult>{difficult}</difficult>
<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"""


def test_voc_reader_on_a_synthetic_tree(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2007"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    objects = {"000005": [("chair", 0, (1, 1, 4, 3)), ("dog", 1, (2, 3, 8, 6))], "000007": [("car", 0, (3, 2, 5, 5))],
               "000009": [("cat", 0, (1, 1, 8, 6))]}
    for name, objs in objects.items():
        _image(root / "JPEGImages" / f"{name}.jpg")
        xml = VOC_XML.format(name=name, objects="".join(
            VOC_OBJECT.format(cls=c, difficult=d, b=b) for c, d, b in objs))
        (root / "Annotations" / f"{name}.xml").write_text(xml)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000005\n000007\n")
    (root / "ImageSets" / "Main" / "test.txt").write_text("000009\n")
    samples = voc_boxes(str(root), "trainval")
    assert [s.image_id for s in samples] == ["JPEGImages/000005.jpg", "JPEGImages/000007.jpg"]
    # 1-based inclusive -> continuous: xmin - 1, ymin - 1, xmax, ymax
    np.testing.assert_array_equal(samples[0].boxes, [[0, 0, 4, 3], [1, 2, 8, 6]])
    assert Image.open(samples[1].uri.removeprefix("file://")).size == (8, 6)
    assert len(voc_boxes(str(root), "trainval", include_difficult=False)[0].boxes) == 1
    assert [s.image_id for s in voc_boxes(str(root), "test")] == ["JPEGImages/000009.jpg"]
