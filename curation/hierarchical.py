"""Hierarchical k-means with resampling (Vo et al. 2024, "Automatic Data
Curation for Self-Supervised Learning: A Clustering-Based Approach").

Why: plain k-means on web-scale, long-tailed embeddings spends most
centroids on the dense head (it minimises squared error, which is dominated by
where the mass is), so sampling "equally per cluster" still over-samples the
head.  The paper's fix has two parts:

* **resampling**: after fitting, take the ``r`` points closest to each
  centroid (a per-cluster, hence roughly *uniform-over-clusters* sample), re-run
  k-means on that sample and reassign every point.  Each repetition moves the
  centroids toward a more uniform cover of the data's support.
* **hierarchy**: level 1 clusters the points, level t clusters the ``k_{t-1}``
  centroids of level t-1; clusters of clusters give balanced sampling
  (:mod:`curation.balanced`) a coarse-to-fine structure to balance across.

Each resampling step runs a *fresh* k-means (k-means++ seeding, then Lloyd) on
the resample and replaces the centroid set with its result, as the authors'
reference code (facebookresearch/ssl-data-curation) does.  Restarting Lloyd
from the current centroids instead leaves them where they are, so resampling
would not move centroids off dense regions
(tests/curation/test_hierarchical.py checks that it does).
Every point's assignment at level t is the level-t cluster of its level-(t-1)
cluster, so the hierarchy is a tree by construction.

Cost (why it scales with N): at level 1 the first fit trains
``niter`` Lloyd iterations on at most ``max_points_per_centroid * k`` points
(256k for k=1000), so it stops growing with N beyond that; each resampling
step seeds (k-means++, sequential in k: O(r k^2 d)) and trains on at most
``r * k`` points and then assigns all N points once (one exact batched flat
search).  Levels >= 2 cluster ``k_{t-1}`` centroids and cost nothing.  So a
level costs one bounded fit, ``resampling_steps`` fits bounded by ``r * k``
points, and ``1 + resampling_steps`` linear passes (figures:
docs/BENCHMARKS.md, bench/curate.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from curation.kmeans import assign, fit_kmeans, l2_normalize

log = logging.getLogger(__name__)

__all__ = ["Hierarchy", "hierarchical_kmeans", "closest_per_cluster"]


@dataclass
class Hierarchy:
    """Result of :func:`hierarchical_kmeans` (level 0 of the lists = finest).

    ``assignments[t][i]``: cluster id at level t+1 of point i (``[N]`` int64).
    ``centroids[t]``: ``[k_t, D]`` float32 centroids of level t+1.
    ``parents[t]``: ``[k_t]`` int64 id at level t+2 of each level-(t+1)
    cluster (``len(parents) == levels - 1``).
    """

    assignments: list[np.ndarray]
    centroids: list[np.ndarray]
    parents: list[np.ndarray] = field(default_factory=list)


def closest_per_cluster(labels: np.ndarray, score: np.ndarray, r: int, *, larger_is_closer: bool) -> np.ndarray:
    """Indices of the ``r`` points closest to their centroid in every cluster
    (all points of clusters with fewer than ``r``), vectorised via lexsort."""
    key = -score if larger_is_closer else score
    order = np.lexsort((key, labels))
    lab = labels[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    pos_in_cluster = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return np.sort(order[pos_in_cluster < r])


def _kmeans_with_resampling(
    x: np.ndarray, k: int, *, steps: int, r: int, niter: int, seed: int,
    spherical: bool, max_points_per_centroid: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """k-means on ``x``, then ``steps`` times: a fresh k-means (k-means++ seeding) on the ``r``
    points closest to each centroid, and every point reassigned to the new centroids.

    The fresh seeding is what moves centroids off the dense modes: the resample holds at most
    ``r`` points per cluster, so the many clusters that split one dense mode contribute no more
    points each than a rare mode's cluster, and a new seeding spreads its k centroids over that
    flatter sample.  Starting Lloyd from the old centroids instead keeps them where they were.
    """
    centroids, labels, score = fit_kmeans(
        x, k, spherical=spherical, niter=niter, seed=seed,
        max_points_per_centroid=max_points_per_centroid, init="kmeans++", return_scores=True,
    )
    for step in range(steps):
        sample = closest_per_cluster(labels, score, r, larger_is_closer=spherical)
        if sample.size <= k:
            log.info("resampling: sample of %d <= k=%d, stopping", sample.size, k)
            break
        centroids, _ = fit_kmeans(
            x[sample], k, spherical=spherical, niter=niter, seed=(seed + 1 + step) & 0x7FFFFFFF,
            max_points_per_centroid=None, init="kmeans++",
        )
        labels, score = assign(x, centroids, spherical=spherical)
        log.info("resampling step %d: k=%d, fresh k-means++ on a sample of %d", step + 1, k, sample.size)
    return centroids, labels


def _per_level(value: int | Sequence[int], levels: int) -> list[int]:
    """One entry per level: a sequence as given, a single number repeated."""
    if isinstance(value, (Sequence, np.ndarray)):
        return list(value)
    return [int(value)] * levels


def hierarchical_kmeans(
    x: np.ndarray,
    ks: Sequence[int],
    *,
    resampling_steps: int | Sequence[int] = 10,
    r: int | Sequence[int] = 10,
    niter: int = 20,
    seed: int = 0,
    spherical: bool = True,
    max_points_per_centroid: int | None = 256,
) -> Hierarchy:
    """Fit the hierarchy bottom-up.

    Args:
        x: ``[N, D]`` embeddings (L2-normalised first if ``spherical``).
        ks: clusters per level, finest first, e.g. ``[1000, 100, 10]``.
        resampling_steps: R per level (int = same for all levels).
        r: points sampled per cluster in each resampling step (per level).
        niter: k-means iterations for every fit.
        seed: base seed (level t uses ``seed + 1000 * t``).
        spherical: cosine k-means (the paper's setting for SSL embeddings).
        max_points_per_centroid: subsampling bound of the first fit at each
            level (see :func:`curation.kmeans.fit_kmeans`).

    Returns:
        :class:`Hierarchy` with per-level point assignments and centroids.
    """
    ks = [int(k) for k in ks]
    if not ks or any(b > a for a, b in zip(ks, ks[1:])):
        raise ValueError(f"ks must be non-empty and non-increasing, got {ks}")
    L = len(ks)
    steps = _per_level(resampling_steps, L)
    rs = _per_level(r, L)
    if len(steps) != L or len(rs) != L:
        raise ValueError("resampling_steps and r must be scalars or have len(ks) entries")
    y = l2_normalize(x) if spherical else np.ascontiguousarray(x, dtype=np.float32)
    point_labels = None
    out = Hierarchy([], [], [])
    for t, k in enumerate(ks):
        if k > y.shape[0]:
            raise ValueError(f"level {t + 1}: k={k} > {y.shape[0]} points")
        cents, labels = _kmeans_with_resampling(
            y, k, steps=steps[t], r=rs[t], niter=niter, seed=seed + 1000 * t,
            spherical=spherical, max_points_per_centroid=max_points_per_centroid,
        )
        if t == 0:
            point_labels = labels
        else:
            out.parents.append(labels)
            point_labels = labels[point_labels]
        out.assignments.append(point_labels.astype(np.int64))
        out.centroids.append(cents.astype(np.float32))
        y = cents
    return out
