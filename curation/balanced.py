"""Top-down balanced sampling over a cluster hierarchy (Vo et al. 2024).

Why water-filling: to pick ``T`` points that are as balanced as possible
over clusters, give every cluster the same quota ``c`` unless it is too small,
in which case it contributes everything it has and its unused share flows to
the others.  That is the largest integer cap ``c`` with
``sum_i min(c, n_i) <= T``; the remaining ``T - sum_i min(c, n_i)`` points
(fewer than the number of clusters with ``n_i > c``, by maximality of ``c``)
go one each to randomly chosen clusters that still have spare points.  The
result hits ``T`` exactly (or takes everything when ``T >= N``).

Top-down: water-fill ``T`` over the top-level clusters, then each top-level
cluster's quota over its children at the level below, ... down to level 1,
where the quota is met by uniform random sampling of the cluster's points.
Cluster sizes ``n_i`` are numbers of *points* in the subtree.  Groups are
identified by their full path (top id, ..., level id), so the assignments
need not be perfectly nested.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["water_fill", "balanced_sample"]


def water_fill(sizes: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Per-cluster quotas ``q_i <= n_i`` with ``sum q = min(target, sum n)``.

    ``q_i = min(c, n_i)`` for the largest cap ``c`` that fits, plus one extra
    for ``target - sum min(c, n_i)`` randomly chosen clusters with
    ``n_i > c``.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    if target >= total:
        return sizes.copy()
    if target <= 0:
        return np.zeros_like(sizes)
    s = np.sort(sizes)
    m = len(s)
    prefix = np.r_[0, np.cumsum(s)]
    # for cap c in [s[j-1], s[j]]: fill(c) = prefix[j] + c * (m - j).
    # find the segment j where fill first exceeds target, then solve for c.
    fill_at = prefix[:-1] + s * (m - np.arange(m))  # fill(c = s[j])
    j = int(np.searchsorted(fill_at, target, side="right"))  # fill(s[j]) > target
    c = (target - prefix[j]) // (m - j)
    quotas = np.minimum(sizes, c)
    leftover = target - int(quotas.sum())
    if leftover:
        spare = np.flatnonzero(sizes > c)
        quotas[rng.choice(spare, size=leftover, replace=False)] += 1
    return quotas


def balanced_sample(
    levels_assignments: Sequence[np.ndarray],
    target: int,
    seed: int,
) -> np.ndarray:
    """Keep mask of exactly ``min(target, N)`` points, balanced top-down.

    Args:
        levels_assignments: per-level cluster id of every point, **finest level
            first** (as :attr:`curation.hierarchical.Hierarchy.assignments`),
            each ``[N]`` int.
        target: number of points to keep.
        seed: RNG seed (leftover distribution and within-cluster sampling).

    Returns:
        ``[N]`` bool mask with ``mask.sum() == min(target, N)``.
    """
    levels = [np.asarray(a, dtype=np.int64).reshape(-1) for a in levels_assignments]
    if not levels:
        raise ValueError("need at least one level")
    n = levels[0].shape[0]
    if any(a.shape[0] != n for a in levels):
        raise ValueError("all levels must assign the same number of points")
    rng = np.random.default_rng(seed)
    target = int(min(max(target, 0), n))

    # path ids: group[t] = id of the (top, ..., level t) path for each point
    top_down = levels[::-1]
    group = np.zeros(n, dtype=np.int64)
    quota = np.array([target], dtype=np.int64)  # quota per current group
    for lab in top_down:
        if lab.size and lab.min() < 0:
            raise ValueError("cluster ids must be non-negative")
        width = int(lab.max()) + 1 if lab.size else 1
        # one int64 key per (parent path, label); sorted unique keys keep each
        # parent's children contiguous
        child_keys, child = np.unique(group * width + lab, return_inverse=True)
        child = child.reshape(-1)
        child_parent = child_keys // width
        child_size = np.bincount(child, minlength=len(child_keys))
        child_quota = np.zeros(len(child_keys), dtype=np.int64)
        # child_keys are sorted by parent, so each parent's children are contiguous
        bounds = np.flatnonzero(np.r_[True, child_parent[1:] != child_parent[:-1], True])
        for s, e in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            q = int(quota[child_parent[s]])
            if q:
                child_quota[s:e] = water_fill(child_size[s:e], q, rng)
        group, quota = child, child_quota

    # level 1: uniform random q_g points inside each finest group
    order = np.lexsort((rng.random(n), group))
    g_sorted = group[order]
    starts = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])
    pos = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    mask = np.zeros(n, dtype=bool)
    mask[order[pos < quota[g_sorted]]] = True
    return mask
