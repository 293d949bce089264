"""COCO instances files: RLE masks, integer image ids, and a streamed writer.

Masks are COCO's compressed RLE (pycocotools.mask), stored as the `counts` string with the
image's (height, width), which is what an annotation's `segmentation` holds. Image ids are
the dataset's own integers when the images come from a COCO file, otherwise a stable integer
derived from the image id string, so reruns and partial runs agree on every id.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from typing import Iterable

import fsspec
import numpy as np

from pipeline.io.rle import encode_masks


def encode_mask(mask: np.ndarray) -> str:
    """(H, W) bool -> compressed RLE counts (ASCII string)."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError:  # a bare GPU machine: the same strings (tests/test_rle.py), a little slower
        return encode_masks(mask[None])[0]
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return rle["counts"].decode("ascii")


def decode_mask(counts: str, height: int, width: int) -> np.ndarray:
    """Compressed RLE counts and the image size -> (H, W) bool."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": [height, width], "counts": counts.encode("ascii")}).astype(bool)


def stable_image_id(image_id: str) -> int:
    """An image id string -> a positive integer below 2^52 (exact in JSON doubles)."""
    return int(hashlib.sha256(image_id.encode()).hexdigest()[:13], 16)


def coco_ids_by_file_name(annotations: str) -> dict[str, int]:
    """A COCO instances JSON -> {file_name: id} of its images."""
    with fsspec.open(annotations, "r") as f:
        images = json.load(f)["images"]
    return {im["file_name"]: int(im["id"]) for im in images}


def write_instances(uri: str, images: Iterable[dict], annotations: Iterable[dict],
                    categories: list[dict], info: dict) -> int:
    """Write a COCO instances file from two streams (each entry serialised as it comes, so
    nothing but the current entry is held) -> the number of annotations written. Written
    under a temporary name and moved into place, so the file is whole or absent."""
    fs, path = fsspec.core.url_to_fs(uri)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with fs.open(tmp, "w") as f:
        f.write('{"info": ' + json.dumps(info) + ', "licenses": [], "categories": ' + json.dumps(categories))
        f.write(', "images": [')
        _write_list(f, images)
        f.write('], "annotations": [')
        n = _write_list(f, annotations)
        f.write("]}\n")
    fs.mv(tmp, path)
    return n


def _write_list(f, entries: Iterable[dict]) -> int:
    n = 0
    for n, entry in enumerate(entries, start=1):
        f.write(("," if n > 1 else "") + "\n" + json.dumps(entry, separators=(",", ":")))
    return n
