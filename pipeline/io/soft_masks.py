"""Soft object masks as stored in the labels table: 8-bit greyscale PNG bytes.

A soft mask is the refined map before its 0.5 threshold (what max-F is computed over, and what
a user distilling soft targets wants). 8 bits keep max-F exact to 1/255 of a threshold step;
PNG keeps a smooth map to a few KB.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_soft(soft: np.ndarray) -> bytes:
    """(H, W) float in [0, 1] -> PNG bytes of round(255 * soft)."""
    buffer = io.BytesIO()
    Image.fromarray((np.clip(soft, 0, 1) * 255).round().astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def decode_soft(data: bytes) -> np.ndarray:
    """PNG bytes from encode_soft -> (H, W) float32 in [0, 1]."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32) / 255.0
