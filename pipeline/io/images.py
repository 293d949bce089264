"""Decode untrusted image bytes into RGB uint8 arrays, or fail with a clear `ImageError`.

Handles what real datasets contain: EXIF rotation, grayscale, CMYK, palette, RGBA (composited
on white), 16-bit and float images; rejects empty, truncated, non-image and oversized files
before they cost memory.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from pipeline.io.sources import read_bytes

# Tests only (tests/test_faults.py): bytes containing this variable's value make the decoding
# process exit at once, as a crashing native decoder would. Never set in production.
TEST_EXIT_MARKER_ENV = "DEEP_SPECTRAL_TEST_EXIT_MARKER"
TEST_EXIT_CODE = 86

# Our own max_pixels check replaces PIL's global bomb guard (which is process-wide state).
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(ValueError):
    """An input that cannot become an RGB image; `stage` says where it failed."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


def decode_image(data: bytes, max_pixels: int = 64_000_000) -> np.ndarray:
    """Bytes of any PIL-readable format -> (H, W, 3) uint8 RGB, EXIF orientation applied."""
    if not data:
        raise ImageError("decode", "empty file (0 bytes)")
    marker = os.environ.get(TEST_EXIT_MARKER_ENV)
    if marker and marker.encode() in data:
        os._exit(TEST_EXIT_CODE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(
                    "decode", f"{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}"
                )
            img.load()
            img = ImageOps.exif_transpose(img)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("decode", "not an image (format not recognised)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError("decode", f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError("decode", f"corrupt or truncated image: {exc}") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # PIL's convert("RGB") clips high-bit-depth values at 255; rescale instead.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr, top = arr - lo, max(hi - lo, 1e-12)
        gray = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def check_min_size(image: np.ndarray, patch_size: int) -> None:
    """Reject images that cannot hold a single patch."""
    height, width = image.shape[:2]
    if height < patch_size or width < patch_size:
        raise ImageError("preprocess", f"image {width}x{height} is smaller than one {patch_size}px patch")


def extracted_image(row: dict) -> np.ndarray:
    """A shard row's source image (source_uri, image_sha256, height, width), decoded as extraction
    decoded it; ValueError when the file is no longer the image that was extracted."""
    data = read_bytes(row["source_uri"])
    if hashlib.sha256(data).hexdigest() != row["image_sha256"]:
        raise ValueError(f"{row['image_id']}: source image changed since extraction ({row['source_uri']})")
    image = decode_image(data)
    if image.shape[:2] != (row["height"], row["width"]):
        raise ValueError(f"{row['image_id']}: decoded {image.shape[:2]}, extracted {(row['height'], row['width'])}")
    return image
