"""Buckets of uint64 keys by 16 of their bits: the counting and gathering passes of bounded sorts.

A set of keys too large to sort at once is sorted a group of buckets at a time: one pass counts the
keys per bucket of their top 16 bits (:func:`bucket_hist`), consecutive buckets are grouped up to a
size, and one pass per group gathers its keys (:func:`bucket_gather`) to sort them; a bucket larger
than a group is counted again by its next 16 bits. :mod:`analysis.kernels.bootstrap` streams its
sorted pool's keys through them on the way to disk; :mod:`analysis.kernels.pooled` runs the same two
passes on rows of scores, making each key as it reads it (no key array).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["BUCKET_BITS", "bucket_of", "bucket_hist", "bucket_gather"]

#: Bits of the key per bucket level (65,536 buckets).
BUCKET_BITS = 16


@numba.njit(cache=True, nogil=True, inline="always")
def bucket_of(k, prefix, shift):  # pragma: no cover - compiled
    """The bucket of key ``k`` (its 16 bits below ``shift``), or -1 if ``k >> shift != prefix``
    (every key is under the prefix when shift == 64: a shift by 64 is undefined in LLVM, not 0)."""
    if shift < 64 and (k >> np.uint64(shift)) != prefix:
        return -1
    return np.int64((k >> np.uint64(shift - 16)) & np.uint64(0xFFFF))


@numba.njit(cache=True, nogil=True)
def bucket_hist(keys, prefix, shift, hist):  # pragma: no cover - compiled
    """Count keys with ``key >> shift == prefix`` (all if shift == 64) per their next 16 bits."""
    for i in range(keys.size):
        b = bucket_of(keys[i], prefix, shift)
        if b >= 0:
            hist[b] += 1


@numba.njit(cache=True, nogil=True)
def bucket_gather(keys, prefix, shift, lo, hi, out, pos):  # pragma: no cover - compiled
    """Append to ``out`` the keys of :func:`bucket_hist`'s buckets ``lo..hi``; returns the new length."""
    for i in range(keys.size):
        b = bucket_of(keys[i], prefix, shift)
        if lo <= b and b <= hi:
            out[pos] = keys[i]
            pos += 1
    return pos
