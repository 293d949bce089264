"""Benchmark readers: images with ground-truth masks or boxes, as a list of `Sample`s.

    folder_pairs(images, masks)            images/NAME.ext + masks/NAME.png, matched by stem
    coco_boxes(images, annotations_json)   COCO instances JSON (iscrowd boxes ignored)
    voc_boxes(voc_root, split)             PASCAL VOC: ImageSets/Main/SPLIT.txt + Annotations/*.xml
    voc_split_ids(voc_root, split)         the image ids of a VOC split file, streamed

Boxes are float [x0, y0, x1, y1] in continuous pixel coordinates (pixel columns 0..9 are
[0, 10)), the convention of pipeline.features.geometry and pipeline.evaluation.object_metrics. Paths may be local or
fsspec URLs.
"""
from __future__ import annotations

import io
import json
import posixpath
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Iterator

import fsspec
import numpy as np
from PIL import Image

from pipeline.io.sources import list_images, read_bytes


@dataclass(frozen=True, eq=False)
class Sample:
    image_id: str  # unique, stable: the path relative to the images folder
    uri: str
    mask_uri: str | None = None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # (n, 4) xyxy
    coco_id: int | None = None  # the dataset's own numeric id, for COCO results files


def _stem(image_id: str) -> str:
    return posixpath.splitext(image_id)[0]


def folder_pairs(images: str, masks: str) -> list[Sample]:
    """Every image with a mask of the same relative path stem (any extension), sorted by id.

    Images without a mask are left out (a benchmark's mask folder defines the split).
    """
    by_stem = {_stem(r.image_id): r.uri for r in list_images(masks)}
    return [Sample(r.image_id, r.uri, mask_uri=by_stem[_stem(r.image_id)])
            for r in list_images(images) if _stem(r.image_id) in by_stem]


def read_mask(uri: str) -> np.ndarray:
    """A mask image -> (H, W) bool; any non-zero value (in any channel) is foreground."""
    arr = np.asarray(Image.open(io.BytesIO(read_bytes(uri))))
    return arr.any(axis=-1) if arr.ndim == 3 else arr != 0


def coco_boxes(images: str, annotations: str) -> list[Sample]:
    """Images listed in a COCO instances JSON that exist under `images`, sorted by file name,
    with their non-crowd boxes (COCO bbox [x, y, w, h] -> [x, y, x + w, y + h])."""
    with fsspec.open(annotations, "rt") as f:
        data = json.load(f)
    boxes: dict[int, list[list[float]]] = {}
    for ann in data.get("annotations", []):
        if ann.get("iscrowd", 0):
            continue
        x, y, w, h = ann["bbox"]
        boxes.setdefault(ann["image_id"], []).append([x, y, x + w, y + h])
    present = {r.image_id: r.uri for r in list_images(images)}
    samples = []
    for img in sorted(data["images"], key=lambda i: i["file_name"]):
        if img["file_name"] in present:
            samples.append(Sample(img["file_name"], present[img["file_name"]],
                                  boxes=np.array(boxes.get(img["id"], []), dtype=np.float64).reshape(-1, 4),
                                  coco_id=img["id"]))
    return samples


def voc_boxes(voc_root: str, split: str = "trainval", include_difficult: bool = True) -> list[Sample]:
    """PASCAL VOC (VOCdevkit/VOC2007 or VOC2012): the images of ImageSets/Main/SPLIT.txt (or
    "Segmentation/SPLIT", see voc_split_ids) with their object boxes. VOC's 1-based inclusive
    [xmin, ymin, xmax, ymax] becomes [xmin - 1, ymin - 1, xmax, ymax]. CorLoc conventions count
    all objects, difficult included."""
    root = voc_root.rstrip("/")
    fs, _ = fsspec.core.url_to_fs(root)
    samples = []
    for name in voc_split_ids(root, split):
        with fsspec.open(f"{root}/Annotations/{name}.xml", "rb") as f:
            tree = ET.parse(f).getroot()
        filename = tree.findtext("filename") or f"{name}.jpg"
        boxes = []
        for obj in tree.iter("object"):
            if not include_difficult and obj.findtext("difficult", "0").strip() == "1":
                continue
            bb = obj.find("bndbox")
            x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append([x0 - 1, y0 - 1, x1, y1])
        uri = fs.unstrip_protocol(f"{fsspec.core.url_to_fs(root)[1]}/JPEGImages/{filename}")
        samples.append(Sample(f"JPEGImages/{filename}", uri,
                              boxes=np.array(boxes, dtype=np.float64).reshape(-1, 4)))
    return samples


VOC_IMAGE_SETS = ("Main", "Segmentation")


def voc_split_ids(voc_root: str, split: str = "trainval") -> Iterator[str]:
    """Image ids (file stems, "2008_000008") of a VOC split, read line by line.

    SPLIT names ImageSets/Main/SPLIT.txt; "Segmentation/SPLIT" names
    ImageSets/Segmentation/SPLIT.txt (the smaller set with segmentation masks). Only a line's
    first column is read. A missing file raises here, naming the splits that do exist."""
    root = voc_root.rstrip("/")
    image_set, _, name = split.rpartition("/")
    image_set = image_set or "Main"
    if image_set not in VOC_IMAGE_SETS:
        raise ValueError(f"VOC split {split!r}: expected NAME or <Main|Segmentation>/NAME")
    fs, path = fsspec.core.url_to_fs(f"{root}/ImageSets")
    if not fs.isdir(path):
        raise FileNotFoundError(f"{voc_root!r} is not a VOC year folder (no ImageSets/): "
                                "give VOCdevkit/VOC2007 or VOCdevkit/VOC2012")
    split_file = f"{path}/{image_set}/{name}.txt"
    if not fs.isfile(split_file):
        raise FileNotFoundError(f"no VOC split file {image_set}/{name}.txt under {root}/ImageSets; "
                                f"splits there: {', '.join(_voc_splits(fs, path)) or 'none'}")
    return _first_column(fs, split_file)


def _voc_splits(fs, image_sets: str) -> list[str]:
    """Split names under ImageSets/{Main,Segmentation}, without the per-class files (cat_val)."""
    found = []
    for image_set in VOC_IMAGE_SETS:
        if fs.isdir(f"{image_sets}/{image_set}"):
            for p in sorted(fs.ls(f"{image_sets}/{image_set}", detail=False)):
                stem = posixpath.splitext(posixpath.basename(p))[0]
                if p.endswith(".txt") and "_" not in stem:
                    found.append(stem if image_set == "Main" else f"{image_set}/{stem}")
    return found


def _first_column(fs, path: str) -> Iterator[str]:
    with fs.open(path, "rt") as f:
        for line in f:
            if line.strip():
                yield line.split()[0]
