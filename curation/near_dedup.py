"""Near-duplicate removal on 64-bit perceptual hashes with a faiss binary index.

Semantics (greedy in key order, documented because transitive chains make
"near-duplicate" ambiguous): items are visited in increasing ``order_keys``
(ties by position).  An item is **removed iff its hash is within
``max_hamming`` of an item that was already visited and kept**; otherwise it is
kept.  So in a chain ``A - B - C`` (A~B, B~C, A!~C, key order A<B<C) B is
removed as a copy of A and C is *kept*, because its only neighbour B was not
kept.  This never removes an item whose every near neighbour was itself
removed, so the kept set is an independent set of the "within t" graph that
is also maximal (every removed item has a kept neighbour).
``duplicate_of[j]`` is a kept, earlier item within ``t`` of j: the closest
kept earlier neighbour (ties: earliest key) of the first item carrying j's
exact hash (items with identical hashes are decided together, so a later
copy may point to the first copy's target even if a closer kept item with a
key between the two exists).

Scale: all-pairs Hamming on 1M hashes is 1e12 popcounts, so for N > 20k and
small radii we use the pigeonhole trick: split the
64 bits into ``t+1`` substrings of ``b = 64 // (t+1)`` bits; two hashes within
distance ``t`` agree exactly on at least one substring, so exact bucket joins
in ``t+1`` tables find every pair (no false negatives) and each candidate is
verified with its true distance.  The join is a sorted-key walk in numpy
(:func:`_bucket_pairs`) rather than ``faiss.IndexBinaryMultiHash``, whose
range search is much slower on the same job (figures: docs/BENCHMARKS.md,
``bench/code_figures.py binary_search``).  Small N, or radii too large for
substrings to prune, use the exact
``faiss.IndexBinaryFlat`` range search.  Identical hashes are
collapsed first so e.g. 10k copies of one image cost one row, not 1e8 pairs.
faiss' binary range search is strict (``d < radius``), hence ``radius = t+1``.

Shift-tolerant variant: pass ``query_hashes`` ``[N, S]`` (e.g. from
:func:`curation.phash.phash_shifts`, whose column 0 equals ``hashes``); the
distance between i and j becomes ``min_s d(query[j, s], hashes[i])``,
symmetrised (``min`` over both directions).
"""

from __future__ import annotations

import logging
from typing import Sequence

import faiss
import numpy as np

log = logging.getLogger(__name__)

__all__ = ["find_near_duplicates", "order_ranks"]

_QUERY_CHUNK = 65536


def order_ranks(order_keys: Sequence[str] | Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """Rank (0 = first) of each item by its key; ties broken by position.

    Keys may be strings (lexicographic) or numbers (ascending).
    """
    keys = np.asarray(order_keys)
    if keys.shape != (n,):
        raise ValueError(f"order_keys must have shape ({n},), got {keys.shape}")
    order = np.argsort(keys, kind="stable")
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(n, dtype=np.int64)
    return ranks


def _to_codes(h: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(h, dtype=np.uint64).view(np.uint8).reshape(-1, 8)


def _use_flat(n: int, max_hamming: int) -> bool:
    """True when pigeonhole buckets would not prune enough to beat brute force."""
    nhash = max_hamming + 1
    b = 64 // nhash
    # expected candidates per query ~ nhash * n / 2^b for uniform bits; flat = n
    return n <= 20000 or b < 6 or nhash / 2.0**b > 0.25


def _flat_pairs(base: np.ndarray, queries: np.ndarray, max_hamming: int):
    """Exact range search with ``faiss.IndexBinaryFlat`` (strict ``< t+1``)."""
    index = faiss.IndexBinaryFlat(64)
    index.add(_to_codes(base))
    for s in range(queries.shape[1]):
        q = _to_codes(queries[:, s])
        for start in range(0, q.shape[0], _QUERY_CHUNK):
            lims, d, i = index.range_search(q[start : start + _QUERY_CHUNK], max_hamming + 1)
            counts = np.diff(lims).astype(np.int64)
            a = np.repeat(np.arange(start, start + len(counts), dtype=np.int64), counts)
            yield a, i.astype(np.int64), d.astype(np.int64)


def _bucket_pairs(base: np.ndarray, queries: np.ndarray, max_hamming: int):
    """Pigeonhole multi-index join: every (query a, base b) with distance <= t.

    Table ``k`` keys each hash by bits ``[k*b, (k+1)*b)``; pairs within ``t``
    share at least one of the ``t+1`` keys exactly.  For each table the base
    is sorted by key and every query walks its bucket one offset at a time,
    vectorised over all queries whose bucket is still long enough, so the work
    is sum(bucket sizes) popcounts with no Python loop over items.
    """
    nhash = max_hamming + 1
    b = 64 // nhash
    mask = np.uint64((1 << b) - 1)
    t = max_hamming
    for k in range(nhash):
        shift = np.uint64(k * b)
        bkey = (base >> shift) & mask
        order = np.argsort(bkey, kind="stable")
        bk, bh = bkey[order], base[order]
        for s in range(queries.shape[1]):
            q = queries[:, s]
            qk = (q >> shift) & mask
            lo = np.searchsorted(bk, qk, side="left")
            hi = np.searchsorted(bk, qk, side="right")
            active = np.flatnonzero(hi > lo)
            o = 0
            while active.size:
                p = lo[active] + o
                d = np.bitwise_count(q[active] ^ bh[p])
                m = d <= t
                if m.any():
                    yield active[m].astype(np.int64), order[p[m]].astype(np.int64), d[m].astype(np.int64)
                o += 1
                active = active[hi[active] > lo[active] + o]


def _neighbour_pairs(
    base: np.ndarray, queries: np.ndarray, max_hamming: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (a, b, d) with a != b and min_s d(queries[a, s], base[b]) <= t,
    symmetrised, with ``d`` the smaller of both directions."""
    # flat cost grows with N * S queries against N codes, so decide on N * S
    gen = _flat_pairs if _use_flat(base.shape[0] * queries.shape[1], max_hamming) else _bucket_pairs
    src, dst, dist = [], [], []
    for a, i, d in gen(base, queries, max_hamming):
        keep = a != i
        src.append(a[keep])
        dst.append(i[keep])
        dist.append(d[keep])
    a = np.concatenate(src) if src else np.zeros(0, np.int64)
    b = np.concatenate(dst) if dst else np.zeros(0, np.int64)
    d = np.concatenate(dist) if dist else np.zeros(0, np.int64)
    # symmetrise, then keep the minimum distance per ordered pair
    a, b, d = np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([d, d])
    if len(a) == 0:
        return a, b, d
    order = np.lexsort((d, b, a))
    a, b, d = a[order], b[order], d[order]
    first = np.ones(len(a), dtype=bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return a[first], b[first], d[first]


def find_near_duplicates(
    hashes: np.ndarray,
    order_keys: Sequence[str] | Sequence[int] | np.ndarray,
    max_hamming: int,
    *,
    query_hashes: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy near-duplicate detection in key order (see module docstring).

    Args:
        hashes: ``[N]`` uint64 perceptual hashes.
        order_keys: ``[N]`` strings or numbers; smaller = earlier = preferred.
        max_hamming: ``t``; pairs with Hamming distance ``<= t`` are duplicates.
        query_hashes: optional ``[N, S]`` uint64 shift variants (column 0 must
            be ``hashes``) for the shift-tolerant distance.

    Returns:
        ``duplicate_of`` int64 ``[N]``: -1 if kept, else the index of the kept,
        earlier item this one duplicates.
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64).reshape(-1)
    n = hashes.shape[0]
    t = int(max_hamming)
    if not 0 <= t < 64:
        raise ValueError(f"max_hamming must be in [0, 63], got {t}")
    ranks = order_ranks(order_keys, n)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if query_hashes is None:
        full = hashes[:, None]
    else:
        full = np.ascontiguousarray(query_hashes, dtype=np.uint64)
        if full.ndim != 2 or full.shape[0] != n or not np.array_equal(full[:, 0], hashes):
            raise ValueError("query_hashes must be [N, S] with column 0 == hashes")

    # collapse identical rows: members of a group behave as one item whose
    # key is the group's smallest key (see module docstring)
    uniq, inverse = np.unique(full, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    g = uniq.shape[0]
    group_rank = np.full(g, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(group_rank, inverse, ranks)
    rep = np.empty(g, dtype=np.int64)  # the item with the smallest key
    rank_to_item = np.argsort(ranks)
    rep[:] = rank_to_item[group_rank]

    a, b, d = _neighbour_pairs(uniq[:, 0], uniq, t)
    # only edges to earlier groups matter for the greedy pass
    earlier = group_rank[b] < group_rank[a]
    a, b, d = a[earlier], b[earlier], d[earlier]
    order = np.lexsort((group_rank[b], d, group_rank[a]))
    a, b = a[order], b[order]  # grouped by a (in visiting order), closest first

    kept = np.ones(g, dtype=bool)
    dup_group = np.full(g, -1, dtype=np.int64)
    if len(a):
        starts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
        ends = np.r_[starts[1:], len(a)]
        for s, e in zip(starts.tolist(), ends.tolist()):
            # candidates sorted by (distance, key): first kept one wins
            cand = b[s:e]
            hit = np.flatnonzero(kept[cand])
            if hit.size:
                kept[a[s]] = False
                dup_group[a[s]] = cand[hit[0]]

    out = np.where(kept[inverse], rep[inverse], rep[np.maximum(dup_group, 0)][inverse])
    out = out.astype(np.int64)
    out[np.arange(n) == out] = -1  # group representatives that are kept
    return out
