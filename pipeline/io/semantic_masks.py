"""Semantic segmentation ground truth: class-index masks and label maps.

    voc_semantic(voc_root, split)   PASCAL VOC ImageSets/Segmentation/SPLIT.txt + SegmentationClass
    read_label_map(uri)             JSON {"classes", "ignore_index", "map"} -> LabelMap
    read_class_mask(uri, label_map) -> (H, W) int64 classes, ignore_index where unlabeled

VOC masks are palette PNGs whose indices are the 21 classes (0 = background) and 255 on
object borders (ignored). A label map remaps raw mask values (e.g. COCO panoptic ids) to
evaluation classes; values it does not list are ignored.
"""
from __future__ import annotations

import io
import json
import posixpath
from dataclasses import dataclass

import fsspec
import numpy as np
from PIL import Image

from pipeline.io.ground_truth import Sample, voc_split_ids
from pipeline.io.sources import read_bytes

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


@dataclass(frozen=True)
class LabelMap:
    classes: tuple[str, ...]
    ignore_index: int
    lookup: np.ndarray  # (65536,) raw mask value -> class, ignore_index where unmapped

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return self.lookup[raw.astype(np.int64)]


def read_label_map(uri: str) -> LabelMap:
    """{"classes": [...], "ignore_index": 255, "map": {"raw value": class, ...}} -> LabelMap."""
    with fsspec.open(uri, "rt") as f:
        data = json.load(f)
    missing = {"classes", "map"} - set(data)
    if missing:
        raise ValueError(f"{uri}: label map needs keys {sorted(missing)}")
    ignore = int(data.get("ignore_index", 255))
    lookup = np.full(65536, ignore, dtype=np.int64)
    for raw, cls in data["map"].items():
        if not (0 <= int(cls) < len(data["classes"]) or int(cls) == ignore):
            raise ValueError(f"{uri}: value {raw} maps to class {cls}, outside 0..{len(data['classes']) - 1}")
        lookup[int(raw)] = int(cls)
    return LabelMap(tuple(data["classes"]), ignore, lookup)


def read_class_mask(uri: str, label_map: LabelMap | None = None) -> np.ndarray:
    """A class-index mask (palette or greyscale PNG) -> (H, W) int64 classes."""
    img = Image.open(io.BytesIO(read_bytes(uri)))
    if img.mode not in ("P", "L", "I", "I;16"):
        raise ValueError(f"{uri}: class masks must hold class indices (palette or greyscale), "
                         f"got mode {img.mode}")
    raw = np.asarray(img).astype(np.int64)
    return label_map(raw) if label_map is not None else raw


def voc_semantic(voc_root: str, split: str = "val") -> list[Sample]:
    """PASCAL VOC year folder -> the images of ImageSets/Segmentation/SPLIT.txt with their
    SegmentationClass masks, in split order (image ids as pipeline.io.ground_truth.voc_boxes names them)."""
    root = voc_root.rstrip("/")
    ids = list(voc_split_ids(root, f"Segmentation/{split.rpartition('/')[2]}"))
    if not ids:
        raise ValueError(f"{root}: split {split} lists no images")
    return [Sample(f"JPEGImages/{i}.jpg", posixpath.join(root, "JPEGImages", f"{i}.jpg"),
                   mask_uri=posixpath.join(root, "SegmentationClass", f"{i}.png")) for i in ids]
