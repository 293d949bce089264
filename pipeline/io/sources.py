"""Turn a SOURCE argument into (image_id, uri) pairs, and read image bytes, through fsspec.

SOURCE may be a folder, a glob, a text file listing one path or URL per line (`.txt`, `.lst`),
or any of these behind an fsspec URL (s3://, gs://, memory://, file://). The image id is the
path relative to the folder (or the glob's fixed prefix), so ids stay stable when the same
dataset moves between buckets.

`iter_images` streams: a folder is walked one directory listing at a time (fsspec's `find`
would hold the whole bucket's listing at once), so the driver's memory is bounded by the
largest single directory, not the dataset. `list_images` is the same, sorted, as a list.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Callable, Iterator

import fsspec
from fsspec.utils import glob_translate

from pipeline.io.storage import with_retries

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
LIST_EXTENSIONS = (".txt", ".lst")


@dataclass(frozen=True)
class ImageRef:
    image_id: str
    uri: str


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def list_images(source: str) -> list[ImageRef]:
    """All images under SOURCE, sorted by id (list files keep their own order). Files without
    an image extension are skipped."""
    refs = list(iter_images(source))
    return refs if source.lower().endswith(LIST_EXTENSIONS) else sorted(refs, key=lambda r: r.image_id)


def iter_images(source: str) -> Iterator[ImageRef]:
    """The images of SOURCE one at a time: folders in name order, directory by directory.

    What SOURCE is gets decided here, before the first item (a missing source raises now,
    not on the first `next`)."""
    fs, path = fsspec.core.url_to_fs(source)
    if _is_glob(path):
        return _glob(fs, path)
    if fs.isdir(path):
        return _walk(fs, path.rstrip("/"), root=path.rstrip("/"))
    if path.lower().endswith(LIST_EXTENSIONS):
        return _list_file(fs, path)
    if fs.isfile(path):
        is_image = path.lower().endswith(IMAGE_EXTENSIONS)
        return iter([ImageRef(posixpath.basename(path), fs.unstrip_protocol(path))] if is_image else [])
    raise FileNotFoundError(f"source {source!r} is not a folder, glob, list file or image")


def _walk(fs, top: str, root: str, maxdepth: int | None = None,
          keep: Callable[[str], bool] = lambda path: True) -> Iterator[ImageRef]:
    """Image files under `top`, ids relative to `root`; one `ls` per directory."""
    for folder, dirs, files in fs.walk(top, maxdepth=maxdepth, on_error="raise"):
        dirs.sort()  # walk recurses in this list's order: the same order on every run
        for name in sorted(files):
            path = f"{folder.rstrip('/')}/{name}"
            if name.lower().endswith(IMAGE_EXTENSIONS) and keep(path):
                yield ImageRef(posixpath.relpath(path, root) if root else path, fs.unstrip_protocol(path))


def _glob(fs, pattern: str) -> Iterator[ImageRef]:
    """`fs.glob`'s matching (fsspec's own translation), but walking the fixed prefix lazily."""
    first = min(pattern.index(ch) for ch in "*?[" if ch in pattern)
    root = pattern[:first].rsplit("/", 1)[0] if "/" in pattern[:first] else ""
    depth = None if "**" in pattern else pattern[len(root):].strip("/").count("/") + 1
    regex = re.compile(glob_translate(pattern))
    if root and not fs.isdir(root):
        return iter([])
    return _walk(fs, root or fs.root_marker or ".", root, depth, keep=lambda path: bool(regex.match(path)))


def _list_file(fs, path: str) -> Iterator[ImageRef]:
    """One path or URL per line; relative paths are relative to the list file's folder."""
    base = posixpath.dirname(path)
    with fs.open(path, "rt") as f:
        for line in f:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            uri = entry if "://" in entry or entry.startswith("/") else fs.unstrip_protocol(posixpath.join(base, entry))
            yield ImageRef(entry, uri)


def read_bytes(uri: str) -> bytes:
    """The file's bytes; an unreachable store is waited out (pipeline.io.storage.with_retries),
    a missing file raises at once."""
    return with_retries(_read, uri)


def _read(uri: str) -> bytes:
    with fsspec.open(uri, "rb") as f:
        return f.read()
