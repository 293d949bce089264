"""Batch matting as a callable: decoded images (or refs) and their trimaps in, matte rows and
error rows out.

Per image: the given trimap (read here) or, in automatic mode, the Fiedler trimap, then alpha
and the foreground (pipeline.matting.matte.matte); the row keeps alpha, the RGBA cut-out and
the automatic trimap as PNG bytes (pipeline.io.schema.MATTE_SCHEMA). Loads the backbone once,
when the run needs one (automatic trimaps or fusion), and knows nothing about Ray. One bad
image or trimap becomes an error row; the rest of the batch goes on.
"""
from __future__ import annotations

import dataclasses
import io
import json
import posixpath
from dataclasses import dataclass

import fsspec
import numpy as np
from PIL import Image

from kernels.backend import device_module
from pipeline.batch.decoder import DecodedImage, ImageDecoder
from pipeline.io.schema import exception_error_row
from pipeline.io.soft_masks import encode_soft
from pipeline.io.sources import ImageRef, read_bytes
from pipeline.io.storage import put_whole
from pipeline.matting.config import MattingConfig
from pipeline.matting.matte import cutout, matte
from pipeline.matting.trimap import read_trimap


def load_backbone(cfg: MattingConfig, device: str = "cpu"):
    """The backbone of cfg (automatic trimaps and fusion), on `device`."""
    from pipeline.features.backbones import create_backbone

    b = cfg.backbone
    return create_backbone(b.name, weights=b.weights, features=b.features, device=device,
                           resize=b.long_side if b.long_side else "crop")


def needs_backbone(cfg: MattingConfig, automatic: bool) -> bool:
    """Whether matting needs features: automatic trimaps, or fusion (feature_weight > 0)."""
    return automatic or cfg.feature_weight > 0


def _solver_device(device: str) -> str:
    """Where CG runs: as asked, but the CPU (with a warning) on a GPU actor without CuPy."""
    if device == "cuda" and device_module(device, "CG runs on the CPU; only the backbone uses the GPU") is np:
        return "cpu"
    return device


def file_stem(image_id: str) -> str:
    """Where an image's files go under OUT, without suffix: its id (its path under SOURCE)
    without the extension; the file name alone for ids that are URLs, absolute paths or
    climb out of OUT (list files may hold those)."""
    stem = posixpath.splitext(image_id)[0]
    parts = stem.split("/")
    if "://" in image_id or image_id.startswith("/") or ".." in parts or "" in parts:
        return posixpath.splitext(posixpath.basename(image_id))[0]
    return stem


def encode_png(array: np.ndarray) -> bytes:
    """uint8 (H, W) or (H, W, 4) -> PNG bytes (greyscale or RGBA)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class MatteItem:
    """One image to matte: its ref, the decode stage's DecodedImage or error row (None: decode
    here), and its given trimap's URI (None: automatic)."""

    ref: ImageRef
    decoded: DecodedImage | dict | None = None
    trimap_uri: str | None = None


class ImageMatter:
    """items -> (rows for pipeline.io.schema.matte_table, rows for error_table).

    `backbone`: load one (the run has automatic trimaps or fusion). `layers_out`: a folder
    where the spectral solver's layers are saved as STEM.layers.npy (they are not in the rows)."""

    def __init__(self, cfg: MattingConfig, digest: str, patch_size: int, device: str = "cpu",
                 backbone: bool = True, layers_out: str | None = None):
        self.cfg = dataclasses.replace(cfg, device=_solver_device(device))  # CG runs where the actor does
        self.digest, self.layers_out = digest, layers_out
        self.decoder = ImageDecoder(digest, patch_size, cfg.backbone.long_side, cfg.max_pixels)
        self.backbone = load_backbone(cfg, device) if backbone else None

    def __call__(self, items: list[MatteItem]) -> tuple[list[dict], list[dict]]:
        rows, errors = [], []
        for item in items:
            done = self.matte_one(item)
            (errors if "stage" in done else rows).append(done)
        return rows, errors

    def matte_one(self, item: MatteItem) -> dict:
        """One image's row, or its error row (it has a "stage")."""
        ref = item.ref
        decoded = self.decoder.decode(ref) if item.decoded is None else item.decoded
        if isinstance(decoded, dict):
            return decoded
        source = {"image_id": ref.image_id, "source_uri": ref.uri}
        try:
            given = read_trimap(read_bytes(item.trimap_uri)) if item.trimap_uri else None
        except Exception as exc:  # noqa: BLE001 - a missing or unreadable trimap fails its image alone
            return exception_error_row(source, self.digest, "trimap", exc)
        try:
            result = matte(decoded.image, self.cfg, self.backbone, given)
        except Exception as exc:  # noqa: BLE001 - one image's failure must not stop the others
            return exception_error_row(source, self.digest, "matte", exc)
        if self.layers_out and result.layers is not None:
            buffer = io.BytesIO()
            np.save(buffer, result.layers.astype(np.float32))
            fs, root = fsspec.core.url_to_fs(self.layers_out)
            put_whole(fs, f"{root.rstrip('/')}/{file_stem(ref.image_id)}.layers.npy", buffer.getvalue())
        info = {k: v for k, v in result.info.items() if k != "eigenvalues"}
        height, width = decoded.image.shape[:2]
        return {
            **source, "image_sha256": decoded.sha256, "config_digest": self.digest,
            "height": height, "width": width, "trimap_uri": item.trimap_uri,
            "alpha": encode_soft(result.alpha),
            "rgba": None if result.foreground is None else encode_png(cutout(result.foreground, result.alpha)),
            "trimap": encode_soft(result.trimap) if given is None else None,
            "seconds": float(result.info["seconds_total"]), "info": json.dumps(info, default=_plain),
        }


def _plain(value):
    """NumPy scalars in a result's info -> Python numbers (anything else: its text)."""
    return value.item() if hasattr(value, "item") else str(value)
