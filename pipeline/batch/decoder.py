"""Image decoding as a callable: image refs in, decoded images (and error rows) out.

Read, hash, decode, check and resize: the CPU work before a forward pass. It runs in its own
CPU stage on Ray (jobs/runner.py), so the GPU actors receive ready inputs and only compute;
without Ray the extractor calls it itself. No torch here: a decode process stays small.
"""
from __future__ import annotations

import hashlib
import traceback
from dataclasses import dataclass

import numpy as np

from pipeline.features.preprocess import preprocess
from pipeline.io.images import ImageError, check_min_size, decode_image
from pipeline.io.sources import ImageRef, read_bytes


@dataclass
class DecodedImage:
    """One readable image and the network's input made from it."""

    ref: ImageRef
    image: np.ndarray  # (H, W, 3) uint8, EXIF orientation applied
    sha256: str  # of the file's bytes
    crop: np.ndarray  # (h, w, 3) uint8, h and w multiples of the patch size: the network input
    scale: float  # crop side / original side (1.0 without a long side)


class ImageDecoder:
    """refs -> DecodedImage per readable image, an error row (pipeline.io.schema ERROR_SCHEMA)
    per unreadable one, in input order."""

    def __init__(self, config_digest: str, patch_size: int, long_side: int | None,
                 max_pixels: int = 64_000_000):
        self.config_digest, self.patch_size = config_digest, patch_size
        self.long_side, self.max_pixels = long_side, max_pixels

    def __call__(self, refs: list[ImageRef]) -> list[DecodedImage | dict]:
        return [self.decode(ref) for ref in refs]

    def decode(self, ref: ImageRef) -> DecodedImage | dict:
        try:
            data = read_bytes(ref.uri)
        except Exception as exc:  # missing object, permissions, network: one record each
            return self.error_row(ref, "read", exc)
        try:
            image = decode_image(data, self.max_pixels)
            check_min_size(image, self.patch_size)
        except ImageError as exc:
            return self.error_row(ref, exc.stage, exc)
        try:
            crop, scale = preprocess(image, self.patch_size, self.long_side)
        except Exception as exc:
            return self.error_row(ref, "preprocess", exc)
        return DecodedImage(ref, image, hashlib.sha256(data).hexdigest(), crop, scale)

    def error_row(self, ref: ImageRef, stage: str, exc: BaseException) -> dict:
        # The stage has its own column: an ImageError's reason without its "stage: " prefix.
        reason = exc.reason if isinstance(exc, ImageError) else "".join(
            traceback.format_exception_only(type(exc), exc)).strip()
        return {"image_id": ref.image_id, "source_uri": ref.uri, "config_digest": self.config_digest,
                "stage": stage, "error_type": type(exc).__name__, "reason": reason[:2000]}
