"""Dataset layouts -> a stream of `ImageRef`s for extraction, by name.

    folder  ROOT: a folder (recursive), glob or .txt list               pipeline.io.sources
    voc     ROOT: VOCdevkit/VOC2007 or VOC2012; split (default          JPEGImages/<id>.jpg
            trainval) = ImageSets/Main/SPLIT.txt or "Segmentation/SPLIT"
    coco    ROOT: the images folder (ROOT/SPLIT with a split, e.g.      <file_name>
            train2017); annotations (instances JSON) and/or image_ids
            (a list file, one file name or numeric COCO id per line: COCO20k)

    dataset_images("coco", "s3://bucket/coco", split="train2017", annotations=URI) -> Iterator[ImageRef]

Paths are local or any fsspec URL. Image ids are the ones pipeline.io.ground_truth (the evaluation
readers) gives the same images, so `deep-spectral evaluate --shards` reuses shards written from
here: a folder's relative path, COCO's file_name, VOC's "JPEGImages/<id>.jpg" (relative to
the year folder). Listing streams (folders a directory at a time, list files a line at a time)
except a COCO annotations file, which is parsed whole; nothing checks that a listed file
exists (one request per image): a missing one becomes an error row at extraction.
"""
from __future__ import annotations

import inspect
import json
import posixpath
from typing import Callable, Iterator

import fsspec

from pipeline.io.ground_truth import voc_split_ids
from pipeline.io.sources import ImageRef, iter_images


def folder_images(root: str) -> Iterator[ImageRef]:
    return iter_images(root)


def voc_images(root: str, split: str = "trainval") -> Iterator[ImageRef]:
    """The split's images; VOC names every image <id>.jpg in JPEGImages."""
    ids = voc_split_ids(root, split)  # raises now on a bad root or split
    fs, path = fsspec.core.url_to_fs(root.rstrip("/"))
    return (ImageRef(f"JPEGImages/{i}.jpg", fs.unstrip_protocol(f"{path}/JPEGImages/{i}.jpg")) for i in ids)


def coco_images(root: str, split: str | None = None, annotations: str | None = None,
                image_ids: str | None = None) -> Iterator[ImageRef]:
    """Every image of the annotations JSON (by file name), or the images of an id list.

    With both, the list selects images of the JSON, and an entry the JSON lacks is an error.
    List entries are reduced to their base name, because COCO20k's published list reads
    "train2014/COCO_train2014_000000000009.jpg"; numeric ids need the JSON for their names."""
    if annotations is None and image_ids is None:
        raise ValueError("the coco dataset needs annotations (an instances JSON) and/or image_ids "
                         "(a list file, e.g. COCO20k's); for a bare folder use the folder dataset")
    fs, images = fsspec.core.url_to_fs(root.rstrip("/") + (f"/{split.strip('/')}" if split else ""))

    def ref(file_name: str) -> ImageRef:
        return ImageRef(file_name, fs.unstrip_protocol(f"{images}/{file_name}"))

    by_id = _coco_file_names(annotations) if annotations else None
    if image_ids is None:
        return (ref(name) for name in sorted(by_id.values()))
    return (ref(name) for name in _listed_names(image_ids, by_id))


def _coco_file_names(annotations: str) -> dict[int, str]:
    """COCO image id -> file_name. The whole file is read (no streaming JSON parser is a
    dependency), but annotation objects are dropped as they are parsed: the polygons of
    instances_train2017.json (450 MB) never become Python objects."""
    def keep_images_only(obj: dict):
        if "file_name" in obj and "id" in obj:
            return {"id": obj["id"], "file_name": obj["file_name"]}
        return None if "image_id" in obj else obj  # an annotation (or anything under one)

    with fsspec.open(annotations, "rt") as f:
        data = json.load(f, object_hook=keep_images_only)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{annotations}: not a COCO annotations file (no \"images\" list)")
    return {img["id"]: img["file_name"] for img in data["images"]}


def _listed_names(image_ids: str, by_id: dict[int, str] | None) -> Iterator[str]:
    """File names of an id list, in its order, read line by line."""
    known = None if by_id is None else set(by_id.values())
    with fsspec.open(image_ids, "rt") as f:
        for number, line in enumerate(f, 1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            where = f"{image_ids}, line {number}"
            if entry.isdigit():
                if by_id is None:
                    raise ValueError(f"{where}: numeric COCO id {entry} needs annotations to find its file name")
                if int(entry) not in by_id:
                    raise ValueError(f"{where}: COCO id {entry} is not in the annotations")
                yield by_id[int(entry)]
                continue
            name = posixpath.basename(entry)
            if known is not None and name not in known:
                raise ValueError(f"{where}: {name} is not in the annotations")
            yield name


DATASETS: dict[str, Callable[..., Iterator[ImageRef]]] = {
    "folder": folder_images,
    "voc": voc_images,
    "coco": coco_images,
}


def dataset_images(name: str, root: str, **options: str | None) -> Iterator[ImageRef]:
    """The images of dataset NAME under ROOT. Options left None are not passed; one the
    dataset does not take (a split for a folder) is a ValueError, not silently ignored."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    lister = DATASETS[name]
    given = {k: v for k, v in options.items() if v is not None}
    takes = set(inspect.signature(lister).parameters) - {"root"}
    if unknown := sorted(set(given) - takes):
        raise ValueError(f"the {name} dataset does not take {', '.join(unknown)} "
                         f"(it takes: {', '.join(sorted(takes)) or 'only a root'})")
    return lister(root, **given)
