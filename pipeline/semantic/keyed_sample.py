"""Samples that depend on the items a stream holds, not on the order it holds them in.

    Keys(image_ids, index)          each item's key: its image and its index in that image
    position_keys(start, n)         keys of items that have no other name than their stream position
    item_hashes(keys, seed)         -> (n,) uint64, a seeded hash of each key
    KeyedSample(size, seed)         add(keys, *arrays) per batch; result() -> the sample, sorted by key
    sorted_by_key(keys, *arrays)    -> the same items, sorted by (image id, index)

Shards hold an extraction's rows in the order its actors happened to commit them, and two
extractions of the same images cut them into different shards. A reservoir sample (Algorithm R)
depends on that order, and so do k-means++ and PCA fitted on it, and a head trained on it: two
extractions with the same digest gave VOC07 figures a seed's spread apart. Here an item is kept
when its hash is among the `size` smallest of the stream (bottom-k), which is a uniform sample
without replacement that only the set of keys and the seed decide, and the sample is handed
back sorted by key, so whatever is fitted on it sees the same rows in the same order.
"""
from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class Keys(NamedTuple):
    image_ids: np.ndarray  # (n,) str (object array): the item's image
    index: np.ndarray  # (n,) int64: the item's index within its image (segment, label, patch)


def position_keys(start: int, n: int) -> Keys:
    """Keys of a stream's items start..start+n-1 when the caller has no better name for them
    (an in-memory array): the sample then follows the caller's order, which is its to fix."""
    return Keys(np.full(n, "", object), np.arange(start, start + n, dtype=np.int64))


def per_item(image_ids, counts) -> np.ndarray:
    """Row image ids and each row's item count -> (sum counts,) object array of each item's image."""
    return np.repeat(np.asarray(list(image_ids), dtype=object), np.asarray(counts, np.int64))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # A bijective mixer of 64-bit words (Steele et al., SplitMix64's finaliser); uint64 arithmetic
    # wraps, which is the point.
    x = x.copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def item_hashes(keys: Keys, seed: int) -> np.ndarray:
    """(n,) uint64: each (image id, index) key hashed with `seed`. The image id goes through
    BLAKE2b once per distinct image (ids are strings; a process's hash() is salted per run),
    the index through SplitMix64."""
    ids = np.asarray(keys.image_ids, dtype=object)
    unique, inverse = np.unique(ids.astype(str), return_inverse=True) if len(ids) else (np.zeros(0, str), np.zeros(0, np.int64))
    salt = str(int(seed)).encode()
    image_hash = np.array([int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8, key=salt).digest(), "little")
                           for u in unique.tolist()], dtype=np.uint64)
    index = np.asarray(keys.index, np.int64).astype(np.uint64)
    return _splitmix64(image_hash[inverse.ravel()] ^ _splitmix64(index * _GOLDEN + _GOLDEN))


def _key_order(ids: np.ndarray, index: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """`candidates` (positions) sorted by (image id, index)."""
    order = np.lexsort((index[candidates], ids[candidates].astype(str)))
    return candidates[order]


def bottom_k(hashes: np.ndarray, keys: Keys, k: int) -> np.ndarray:
    """Positions of the k items of smallest hash; a tie at the cut goes to the smaller key, so
    the choice never depends on the items' order."""
    if len(hashes) <= k:
        return np.arange(len(hashes))
    kth = np.partition(hashes, k - 1)[k - 1]
    below = np.flatnonzero(hashes < kth)
    tied = np.flatnonzero(hashes == kth)
    need = k - len(below)
    if len(tied) > need:
        tied = _key_order(np.asarray(keys.image_ids, object), np.asarray(keys.index), tied)[:need]
    return np.concatenate([below, tied])


def sorted_by_key(keys: Keys, *arrays: np.ndarray) -> tuple[Keys, ...]:
    """(keys, *arrays) of the same n items -> the same, items sorted by (image id, index)."""
    order = _key_order(np.asarray(keys.image_ids, object), np.asarray(keys.index), np.arange(len(keys.index)))
    return (Keys(np.asarray(keys.image_ids, object)[order], np.asarray(keys.index)[order]),
            *(a[order] for a in arrays))


class KeyedSample:
    """Bottom-k sample of at most `size` items of a stream, by item_hashes(keys, seed).

    add(keys, *arrays) feeds a batch (arrays: the items' payloads, first axis n); result()
    returns (keys, *arrays) of the sample sorted by key, and `seen` counts the stream's items.
    Memory is the sample plus one batch: once the sample is full only the items whose hash
    beats its largest are looked at, and they take the evicted items' slots."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.seen = size, seed, 0
        self.hashes = np.zeros(0, np.uint64)
        self.ids = np.zeros(0, object)
        self.index = np.zeros(0, np.int64)
        self.arrays: list[np.ndarray] | None = None

    def add(self, keys: Keys, *arrays: np.ndarray) -> None:
        n = len(keys.index)
        self.seen += n
        if not n:
            return
        ids, index = np.asarray(keys.image_ids, object), np.asarray(keys.index, np.int64)
        hashes = item_hashes(Keys(ids, index), self.seed)
        if self.arrays is None:
            self.arrays = [np.zeros((0,) + a.shape[1:], a.dtype) for a in arrays]
        if len(self.hashes) == self.size:  # full: only items that can enter are looked at
            enter = np.flatnonzero(hashes <= self.hashes.max())
            hashes, ids, index = hashes[enter], ids[enter], index[enter]
            arrays = tuple(a[enter] for a in arrays)
        if len(self.hashes) + len(hashes) <= self.size or len(self.hashes) < self.size:
            self._append(hashes, ids, index, arrays)
            if len(self.hashes) > self.size:
                self._keep(bottom_k(self.hashes, Keys(self.ids, self.index), self.size))
            return
        old = len(self.hashes)
        winners = bottom_k(np.concatenate([self.hashes, hashes]),
                           Keys(np.concatenate([self.ids, ids]), np.concatenate([self.index, index])), self.size)
        new = winners[winners >= old] - old
        slots = np.setdiff1d(np.arange(old), winners[winners < old])  # the evicted, as many as the new
        self.hashes[slots], self.ids[slots], self.index[slots] = hashes[new], ids[new], index[new]
        for mine, theirs in zip(self.arrays, arrays):
            mine[slots] = theirs[new]

    def _append(self, hashes, ids, index, arrays) -> None:
        self.hashes = np.concatenate([self.hashes, hashes])
        self.ids = np.concatenate([self.ids, ids])
        self.index = np.concatenate([self.index, index])
        self.arrays = [np.concatenate([mine, np.asarray(theirs, mine.dtype)]) for mine, theirs in zip(self.arrays, arrays)]

    def _keep(self, positions: np.ndarray) -> None:
        self.hashes, self.ids, self.index = self.hashes[positions], self.ids[positions], self.index[positions]
        self.arrays = [a[positions] for a in self.arrays]

    def result(self) -> tuple:
        """(keys, *arrays) of the sample, sorted by (image id, index); arrays are None when
        nothing was added."""
        if self.arrays is None:
            return (Keys(self.ids, self.index),)
        return sorted_by_key(Keys(self.ids, self.index), *self.arrays)
