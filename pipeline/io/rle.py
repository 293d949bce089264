"""COCO's compressed RLE of many masks at once, from masks on the host or on a GPU.

The same strings as pycocotools' `mask.encode(...)["counts"]`: runs over the column-major
pixels, starting with a run of zeros, each count from the fourth on stored as its difference
to the count two before, written in 5-bit groups (a continuation bit, sign-extended on the
last group) offset by 48 into ASCII. The runs are found with the masks' own array module
(NumPy or CuPy: one pass over the stack, then only the run boundaries cross to the host), and
the characters are made with NumPy for all runs together: no Python loop over runs or pixels.
"""
from __future__ import annotations

import numpy as np

from kernels.backend import array_module, to_numpy

# A count's difference fits in 7 groups of 5 bits for any image under 2^34 pixels.
MAX_GROUPS = 7


def run_lengths(masks) -> list[np.ndarray]:
    """(L, H, W) bool masks (NumPy or CuPy) -> per mask its run lengths (int64, host) over the
    column-major pixels, the first run counting zeros (0 when the first pixel is set)."""
    xp = array_module(masks)
    L, H, W = masks.shape
    n = H * W
    flat = xp.swapaxes(masks, 1, 2).reshape(L, n).astype(xp.int8)
    # A run starts at pixel 0 and wherever the value changes; a mask starting with a set pixel
    # gets an empty run of zeros first.
    change = xp.empty((L, n), dtype=bool)
    change[:, 0] = True
    change[:, 1:] = flat[:, 1:] != flat[:, :-1]
    rows, cols = (to_numpy(a) for a in xp.nonzero(change))  # the only copy: run boundaries
    first_set = to_numpy(flat[:, 0]) == 1
    out = []
    starts = np.searchsorted(rows, np.arange(L + 1))
    for i in range(L):
        bounds = np.append(cols[starts[i]:starts[i + 1]], n)
        counts = np.diff(bounds)
        out.append(np.concatenate([[0], counts]) if first_set[i] else counts)
    return out


def rle_string(counts: np.ndarray) -> str:
    """Run lengths -> pycocotools' compressed counts string (rleToString), vectorised."""
    x = np.asarray(counts, dtype=np.int64).copy()
    if x.size == 0:
        return ""
    x[3:] -= np.asarray(counts, dtype=np.int64)[1:-2]  # pycocotools: from the fourth count on
    groups = np.empty((x.size, MAX_GROUPS), dtype=np.int64)
    more = np.empty((x.size, MAX_GROUPS), dtype=bool)
    rest = x
    for g in range(MAX_GROUPS):
        c = rest & 0x1F
        rest = rest >> 5  # arithmetic shift, as C's on a signed long
        more[:, g] = np.where(c & 0x10, rest != -1, rest != 0)
        groups[:, g] = c | np.where(more[:, g], 0x20, 0)
    # Group g is written iff every earlier group had its continuation bit.
    written = np.concatenate([np.ones((x.size, 1), bool), np.cumprod(more[:, :-1], axis=1).astype(bool)], axis=1)
    return (groups[written] + 48).astype(np.uint8).tobytes().decode("ascii")


def encode_masks(masks) -> list[str]:
    """(L, H, W) bool masks, NumPy or CuPy -> their compressed RLE counts strings."""
    return [rle_string(counts) for counts in run_lengths(masks)]
