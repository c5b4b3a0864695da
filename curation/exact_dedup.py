"""Exact duplicates: identical decoded pixels, the first by key order is kept.

Hashing decoded pixels (not file bytes) catches the same image saved twice with
different encoder settings or metadata, which file hashes miss.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def exact_duplicates(keys: Sequence[str], digests: Sequence[str], eligible: np.ndarray | None = None) -> np.ndarray:
    """For each item, the index of the kept item with the same digest, or -1.

    Args:
        keys: sample keys; the smallest key of a group is kept, so the result
            does not depend on the order in which shards were read.
        digests: pixel hashes, one per item.
        eligible: bool mask of items that take part (e.g. those that decoded).
    """
    n = len(keys)
    dup_of = np.full(n, -1, dtype=np.int64)
    mask = np.ones(n, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    first: dict[str, int] = {}
    for i in sorted(np.flatnonzero(mask).tolist(), key=lambda j: keys[j]):
        kept = first.setdefault(digests[i], i)
        if kept != i:
            dup_of[i] = kept
    return dup_of
