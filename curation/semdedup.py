"""SemDeDup (Abbas et al. 2023): remove semantic near-duplicates by embedding.

Why clusters: exact all-pairs cosine on N embeddings is O(N^2); near
duplicates are by definition very close, so they almost always fall in the
same k-means cluster and only within-cluster pairs (sum n_c^2 << N^2) need
checking.  Pairs split across a cluster boundary are missed -- the price the
paper accepts.

Algorithm:

1. L2-normalise, spherical k-means with ``k`` clusters (:func:`fit_kmeans`,
   k-means++ init, explicit subsampling).
2. Inside each cluster order the points by cosine to the centroid.  Which end
   goes first decides *which copy survives*.  The paper's default
   (``keep="hard"``, the reference code's ``keep_hard=True``) puts the point
   with the **lowest** cosine to the centroid first, i.e. keeps the least
   prototypical member of each duplicate group, which they found slightly
   better than keeping the most prototypical one (``keep="easy"``).  Ties are
   broken by ``order_keys`` (smaller first), so results do not depend on
   input order.
3. Visit points in that order; point j is removed iff its cosine to an
   *already kept* earlier point of the cluster exceeds ``1 - eps``; it then
   points to the most similar such kept point.  (The paper's reference code
   compares to all earlier points, kept or not, which lets a chain of
   removals remove points far from every survivor; the greedy "kept" rule
   guarantees every removed point is within ``eps`` of a survivor.)

Vectorisation and memory: each cluster is processed in row blocks of
``block`` points; a block is compared to the kept set so far with one matrix
product (``block x kept``), then resolved internally with a ``block x block``
product, so memory is O(block * cluster size) not O(cluster size ^ 2).  A
Python loop runs only over block members that have a same-block earlier
neighbour above the threshold (rare unless the data are very redundant).
"""

from __future__ import annotations

import logging
from typing import Literal, Sequence

import numpy as np

from curation.kmeans import fit_kmeans, l2_normalize
from curation.near_dedup import order_ranks

log = logging.getLogger(__name__)

__all__ = ["semdedup", "semdedup_cluster", "semdedup_from_clusters"]


def semdedup_cluster(x: np.ndarray, threshold: float, *, block: int = 2048) -> np.ndarray:
    """Greedy dedup of rows of ``x`` (unit vectors) visited in row order.

    Returns ``dup_of`` int64 ``[m]`` with local row indices (-1 = kept):
    row j is removed iff ``max_{i<j, i kept} x_i . x_j > threshold``.
    """
    m = x.shape[0]
    dup_of = np.full(m, -1, dtype=np.int64)
    kept_idx = np.zeros(0, dtype=np.int64)
    for s in range(0, m, block):
        e = min(s + block, m)
        xb = x[s:e]
        local = np.full(e - s, -1, dtype=np.int64)
        if kept_idx.size:
            sim = xb @ x[kept_idx].T
            best = sim.argmax(axis=1)
            hit = sim[np.arange(e - s), best] > threshold
            local[hit] = kept_idx[best[hit]]
        cand = np.flatnonzero(local < 0)
        if cand.size > 1:
            xc = xb[cand]
            sim = xc @ xc.T
            adj = np.triu(sim > threshold, k=1)  # adj[i, j]: i earlier than j
            kept_c = np.ones(cand.size, dtype=bool)
            for j in np.flatnonzero(adj.any(axis=0)):
                prev = np.flatnonzero(adj[:j, j] & kept_c[:j])
                if prev.size:
                    kept_c[j] = False
                    local[cand[j]] = s + cand[prev[np.argmax(sim[prev, j])]]
        dup_of[s:e] = local
        kept_idx = np.concatenate([kept_idx, s + np.flatnonzero(local < 0)])
    return dup_of


def semdedup_from_clusters(
    x: np.ndarray,
    centroids: np.ndarray,
    labels: np.ndarray,
    eps: float,
    ranks: np.ndarray,
    *,
    keep: Literal["hard", "easy"] = "hard",
    block: int = 2048,
) -> np.ndarray:
    """Step 2-3 of SemDeDup given an existing spherical clustering.

    ``x`` must be L2-normalised ``[N, D]``, ``centroids`` ``[k, D]``,
    ``labels`` ``[N]``, ``ranks`` ``[N]`` tie-break ranks (see
    :func:`curation.near_dedup.order_ranks`).  Returns ``duplicate_of``.
    """
    n = x.shape[0]
    cos = np.einsum("ij,ij->i", x, centroids[labels])
    primary = cos if keep == "hard" else -cos
    order = np.lexsort((ranks, primary, labels))  # by cluster, then visit order
    bounds = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1], True])
    threshold = 1.0 - float(eps)
    duplicate_of = np.full(n, -1, dtype=np.int64)
    for s, e in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        idx = order[s:e]
        if idx.size < 2:
            continue
        local = semdedup_cluster(x[idx], threshold, block=block)
        rem = local >= 0
        duplicate_of[idx[rem]] = idx[local[rem]]
    return duplicate_of


def semdedup(
    embeddings: np.ndarray,
    k: int,
    eps: float,
    seed: int,
    order_keys: Sequence[str] | Sequence[int] | np.ndarray | None = None,
    *,
    niter: int = 20,
    keep: Literal["hard", "easy"] = "hard",
    max_points_per_centroid: int | None = 256,
    block: int = 2048,
    return_assignments: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """SemDeDup over ``[N, D]`` embeddings (see module docstring).

    Args:
        embeddings: ``[N, D]`` float (normalised internally).
        k: number of spherical k-means clusters.
        eps: remove j if cosine to an earlier kept point > ``1 - eps``.
        seed: k-means seed.
        order_keys: ``[N]`` tie-break keys (default: position).
        niter: k-means iterations.
        keep: ``"hard"`` (paper default: farthest from centroid survives) or
            ``"easy"`` (closest to centroid survives).
        max_points_per_centroid: k-means training subsample bound.
        block: rows per similarity block (memory ~ block x cluster size).
        return_assignments: also return the cluster id of every point.

    Returns:
        ``duplicate_of`` int64 ``[N]`` (-1 = kept, else global index of the
        kept point it duplicates); with ``return_assignments`` a tuple
        ``(duplicate_of, assignments)``.
    """
    x = l2_normalize(embeddings)
    n = x.shape[0]
    if keep not in ("hard", "easy"):
        raise ValueError(f"keep must be 'hard' or 'easy', got {keep!r}")
    ranks = order_ranks(np.arange(n) if order_keys is None else order_keys, n)
    centroids, labels = fit_kmeans(
        x, min(k, n), spherical=True, niter=niter, seed=seed,
        max_points_per_centroid=max_points_per_centroid, init="kmeans++",
    )
    duplicate_of = semdedup_from_clusters(x, centroids, labels, eps, ranks, keep=keep, block=block)
    log.info("semdedup: removed %d / %d (eps=%g, k=%d)", int((duplicate_of >= 0).sum()), n, eps, k)
    if return_assignments:
        return duplicate_of, labels
    return duplicate_of
