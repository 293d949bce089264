"""Turn a SOURCE argument into (image_id, uri) pairs, and read image bytes, through fsspec.

SOURCE may be a folder, a glob, a text file listing one path or URL per line (`.txt`, `.lst`),
or any of these behind an fsspec URL (s3://, gs://, memory://, file://). The image id is the
path relative to the folder (or the glob's fixed prefix), so ids stay stable when the same
dataset moves between buckets.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass

import fsspec

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
LIST_EXTENSIONS = (".txt", ".lst")


@dataclass(frozen=True)
class ImageRef:
    image_id: str
    uri: str


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def list_images(source: str) -> list[ImageRef]:
    """All images under SOURCE, sorted by id. Files without an image extension are skipped."""
    fs, path = fsspec.core.url_to_fs(source)
    if _is_glob(path):
        prefix = path[: min(path.index(ch) for ch in "*?[" if ch in path)]
        root = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        paths = [p for p in fs.glob(path) if fs.isfile(p)]
    elif fs.isdir(path):
        root = path.rstrip("/")
        paths = fs.find(path)
    elif path.lower().endswith(LIST_EXTENSIONS):
        return _list_file(fs, path)
    elif fs.isfile(path):
        root = posixpath.dirname(path)
        paths = [path]
    else:
        raise FileNotFoundError(f"source {source!r} is not a folder, glob, list file or image")
    refs = [
        ImageRef(posixpath.relpath(p, root) if root else p, fs.unstrip_protocol(p))
        for p in paths
        if p.lower().endswith(IMAGE_EXTENSIONS)
    ]
    return sorted(refs, key=lambda r: r.image_id)


def _list_file(fs, path: str) -> list[ImageRef]:
    """One path or URL per line; relative paths are relative to the list file's folder."""
    base = posixpath.dirname(path)
    refs = []
    with fs.open(path, "rt") as f:
        for line in f:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            uri = entry if "://" in entry or entry.startswith("/") else fs.unstrip_protocol(posixpath.join(base, entry))
            refs.append(ImageRef(entry, uri))
    return refs


def read_bytes(uri: str) -> bytes:
    with fsspec.open(uri, "rb") as f:
        return f.read()
