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
3. Visit points in that order and remove near-duplicates of earlier points.
   Two rules (``mode``):

   * ``"reference"`` (default; the paper's reference code): point j is removed
     iff its cosine to *any* earlier point of the cluster, kept or removed,
     exceeds ``1 - eps``.  Along a chain a-b-c where a~b and b~c but not a~c,
     both b and c go.  ``duplicate_of[j]`` is the most similar earlier point,
     which may itself be removed; following ``duplicate_of`` always ends at a
     kept point (each step goes to an earlier point, and the first point of a
     cluster is kept).
   * ``"kept_only"``: j is removed iff its cosine to an *already kept* earlier
     point exceeds ``1 - eps``; it then points at the most similar such kept
     point.  On the chain only b goes: every removed point is within ``eps``
     of a survivor, at the price of keeping more.

Vectorisation and memory: each cluster is processed in row blocks of
``block`` points.  ``reference``: a block is compared with every earlier row
of the cluster (``block x earlier rows``) and with itself (``block x block``).
``kept_only``: a block is compared to the kept points of the earlier
blocks with one matrix product (``block x kept``, the kept rows live in one
contiguous buffer appended block by block), then to itself with a symmetric
rank-k product (BLAS ``ssyrk``: only the upper triangle, half the flops of a
full product).  Memory is O(block * cluster size), not O(cluster size ^ 2).
Only pairs above the threshold (rare unless the data are very redundant) are
then visited one by one, in visit order, to apply the greedy rule.

Exactness: a removed point points at the most similar (kept, for
``kept_only``) earlier point (ties: the earliest one), wherever it lies, so
the result does not depend on ``block`` (up to float rounding of the products).

Threads: the clusters are independent, so :func:`semdedup_from_clusters`
spreads them over ``threads`` worker threads (default: faiss' OpenMP thread
count, i.e. ``OMP_NUM_THREADS``), largest first, with every BLAS library held
to one thread for the duration of the pass.  Most clusters are small (a few
hundred points), and a multi-threaded BLAS call on a ``100 x 100`` product
spends more time waking and spinning its threads than computing; one cluster
per core keeps both cores busy with useful work instead.  Each cluster is
computed by one thread with one-thread BLAS, so the output does not depend on
the thread count (figures: docs/BENCHMARKS.md, bench/curate.py).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Literal, Sequence

import faiss
import numpy as np
from scipy.linalg.blas import ssyrk

from curation.kmeans import blas_threads, fit_kmeans, l2_normalize
from curation.near_dedup import order_ranks

log = logging.getLogger(__name__)

__all__ = ["semdedup", "semdedup_cluster", "semdedup_from_clusters", "SEMDEDUP_MODES"]

#: which earlier points a point is compared with (see the module docstring)
SEMDEDUP_MODES = ("reference", "kept_only")
Mode = Literal["reference", "kept_only"]

# groups of in-block earlier neighbours larger than this are scanned with numpy
# instead of a Python loop (only reached on very redundant data)
_NUMPY_GROUP = 32
_ROWDOT_CHUNK = 65536


def _block_pairs(xb: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``i < j`` of rows of ``xb`` with ``xb_i . xb_j > threshold``.

    Returns ``(i, j, sim)`` sorted by ``j`` then ``i``.  The Gram matrix is
    formed with ``ssyrk`` (upper triangle only; the lower one is left at 0 and
    never read because only ``i < j`` is kept).
    """
    nb = xb.shape[0]
    gram = ssyrk(1.0, xb.T, trans=1)  # xb.T is F-contiguous: no copy
    diag = np.arange(nb)
    gram[diag, diag] = -np.inf
    above = gram > threshold
    cols = np.flatnonzero(above.any(axis=0))
    if cols.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    ii, pos = np.nonzero(above[:, cols])
    jj = cols[pos]
    up = ii < jj
    ii, jj = ii[up], jj[up]
    order = np.lexsort((ii, jj))
    ii, jj = ii[order], jj[order]
    return ii, jj, gram[ii, jj]


def _resolve_block(
    ii: np.ndarray, jj: np.ndarray, vv: np.ndarray, kept: np.ndarray, local: np.ndarray,
    cross_best: np.ndarray | None, offset: int,
) -> None:
    """Greedy rule inside one block, given its above-threshold pairs.

    Visits the ``j`` having an earlier in-block neighbour in increasing order;
    ``kept`` (bool, in/out) starts as "not a duplicate of an earlier block";
    ``local`` (in/out) holds cluster-local targets.  A point already matched
    in an earlier block is re-pointed to an in-block kept point only if that
    one is strictly more similar (ties go to the earlier block = smaller index).
    """
    if ii.size == 0:
        return
    bounds = np.flatnonzero(np.r_[True, jj[1:] != jj[:-1], True]).tolist()
    ii_l, jj_l, vv_l = ii.tolist(), jj.tolist(), vv.tolist()
    kept_l = kept.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        j = jj_l[a]
        best_i, best_v = -1, -np.inf
        if b - a <= _NUMPY_GROUP:
            for t in range(a, b):
                i = ii_l[t]
                if kept_l[i] and vv_l[t] > best_v:  # strict: first (earliest) max wins
                    best_i, best_v = i, vv_l[t]
        else:
            cand = ii[a:b]
            ok = kept[cand]
            if ok.any():
                vals = vv[a:b][ok]
                p = int(np.argmax(vals))
                best_i, best_v = int(cand[ok][p]), float(vals[p])
        if best_i < 0:
            continue
        if kept_l[j]:
            kept_l[j] = False
            kept[j] = False
            local[j] = offset + best_i
        elif cross_best is not None and best_v > cross_best[j]:
            local[j] = offset + best_i


def _check_mode(mode: str) -> None:
    if mode not in SEMDEDUP_MODES:
        raise ValueError(f"semdedup mode must be one of {', '.join(SEMDEDUP_MODES)}, got {mode!r}")


def semdedup_cluster(x: np.ndarray, threshold: float, *, block: int = 2048, mode: Mode = "reference") -> np.ndarray:
    """Dedup of rows of ``x`` (unit vectors) visited in row order.

    Returns ``dup_of`` int64 ``[m]`` with local row indices (-1 = kept).
    ``mode="reference"``: row j is removed iff ``max_{i<j} x_i . x_j > threshold``;
    ``mode="kept_only"``: iff ``max_{i<j, i kept} x_i . x_j > threshold``.  A removed
    row points at the arg max (the earliest one on ties).  ``block`` bounds memory
    (``block x m`` similarities at a time) and does not change the result.
    """
    _check_mode(mode)
    if mode == "reference":
        return _reference_cluster(x, threshold, block)
    return _kept_only_cluster(x, threshold, block)


def _reference_cluster(x: np.ndarray, threshold: float, block: int) -> np.ndarray:
    """``mode="reference"``: each block of rows against every earlier row (two products per block)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    m = x.shape[0]
    block = max(int(block), 1)
    dup_of = np.full(m, -1, dtype=np.int64)
    for s in range(0, m, block):
        e = min(s + block, m)
        rows = np.arange(e - s)
        inside = x[s:e] @ x[s:e].T
        inside[np.triu_indices(e - s)] = -np.inf  # only earlier rows of the block
        arg = inside.argmax(axis=1) + s
        best = inside[rows, arg - s]
        if s:
            before = x[s:e] @ x[:s].T
            arg_b = before.argmax(axis=1)  # first max = the earliest row on ties
            best_b = before[rows, arg_b]
            earlier = best_b >= best  # ties go to the earlier block
            arg = np.where(earlier, arg_b, arg)
            best = np.where(earlier, best_b, best)
        hit = best > threshold
        dup_of[s:e][hit] = arg[hit]
    return dup_of


def _kept_only_cluster(x: np.ndarray, threshold: float, block: int) -> np.ndarray:
    """``mode="kept_only"``: the greedy rule, a block at a time (see the module docstring)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    m, d = x.shape
    block = max(int(block), 1)
    dup_of = np.full(m, -1, dtype=np.int64)
    if m < 2:
        return dup_of
    kept_x: np.ndarray | None = None  # kept rows of earlier blocks, in row order
    kept_rows = np.zeros(0, dtype=np.int64)
    for s in range(0, m, block):
        e = min(s + block, m)
        xb = x[s:e]
        local = dup_of[s:e]  # view: written in place
        cross_best = None
        if kept_x is not None and kept_rows.size:  # kept_x exists once a block kept rows
            sim = xb @ kept_x[: kept_rows.size].T
            arg = sim.argmax(axis=1)  # first max = earliest kept row
            cross_best = sim[np.arange(e - s), arg]
            hit = cross_best > threshold
            local[hit] = kept_rows[arg[hit]]
        kept = local < 0
        if e - s > 1:
            ii, jj, vv = _block_pairs(xb, threshold)
            _resolve_block(ii, jj, vv, kept, local, cross_best, s)
        if e < m:
            new = np.flatnonzero(kept)
            if kept_x is None:
                kept_x = np.empty((m - e + new.size, d), dtype=np.float32)
            kept_x[kept_rows.size : kept_rows.size + new.size] = xb[new]
            kept_rows = np.concatenate([kept_rows, s + new])
    return dup_of


def _cos_to_centroid(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``x_i . centroids[labels_i]`` in chunks (no ``[N, D]`` temporary)."""
    out = np.empty(x.shape[0], dtype=np.float32)
    for s in range(0, x.shape[0], _ROWDOT_CHUNK):
        e = min(s + _ROWDOT_CHUNK, x.shape[0])
        out[s:e] = np.einsum("ij,ij->i", x[s:e], centroids[labels[s:e]])
    return out


def semdedup_from_clusters(
    x: np.ndarray,
    centroids: np.ndarray,
    labels: np.ndarray,
    eps: float,
    ranks: np.ndarray,
    *,
    keep: Literal["hard", "easy"] = "hard",
    block: int = 2048,
    threads: int | None = None,
    mode: Mode = "reference",
) -> np.ndarray:
    """Step 2-3 of SemDeDup given an existing spherical clustering.

    ``x`` must be L2-normalised ``[N, D]``, ``centroids`` ``[k, D]``,
    ``labels`` ``[N]``, ``ranks`` ``[N]`` tie-break ranks (see
    :func:`curation.near_dedup.order_ranks`).  ``threads``: worker threads
    over clusters (default ``faiss.omp_get_max_threads()``; the result does
    not depend on it).  ``mode``: ``reference`` or ``kept_only`` (module
    docstring).  Returns ``duplicate_of``.
    """
    _check_mode(mode)
    n = x.shape[0]
    labels = np.asarray(labels, dtype=np.int64)
    cos = _cos_to_centroid(x, np.asarray(centroids), labels)
    primary = cos if keep == "hard" else -cos
    order = np.lexsort((ranks, primary, labels))  # by cluster, then visit order
    bounds = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1], True])
    threshold = 1.0 - float(eps)
    duplicate_of = np.full(n, -1, dtype=np.int64)
    spans = [(s, e) for s, e in zip(bounds[:-1].tolist(), bounds[1:].tolist()) if e - s >= 2]
    spans.sort(key=lambda se: se[0] - se[1])  # largest first (stable: ties by position)
    nthreads = faiss.omp_get_max_threads() if threads is None else int(threads)
    nthreads = max(1, min(nthreads, len(spans)))

    def one(span: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        idx = order[span[0] : span[1]]
        return idx, semdedup_cluster(x[idx], threshold, block=block, mode=mode)

    results: Iterator[tuple[np.ndarray, np.ndarray]]
    with blas_threads(1):
        if nthreads == 1:
            results = map(one, spans)
            pool = None
        else:
            pool = ThreadPoolExecutor(max_workers=nthreads, thread_name_prefix="semdedup")
            results = pool.map(one, spans)
        try:
            for idx, local in results:
                rem = local >= 0
                duplicate_of[idx[rem]] = idx[local[rem]]
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
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
    threads: int | None = None,
    mode: Mode = "reference",
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """SemDeDup over ``[N, D]`` embeddings (see module docstring).

    Args:
        embeddings: ``[N, D]`` float (normalised internally).
        k: number of spherical k-means clusters.
        eps: remove j if its cosine to an earlier point (``mode``) > ``1 - eps``.
        seed: k-means seed.
        order_keys: ``[N]`` tie-break keys (default: position).
        niter: k-means iterations.
        keep: ``"hard"`` (paper default: farthest from centroid survives) or
            ``"easy"`` (closest to centroid survives).
        max_points_per_centroid: k-means training subsample bound.
        block: rows per similarity block (memory ~ block x cluster size).
        return_assignments: also return the cluster id of every point.
        threads: worker threads of the within-cluster pass (default: faiss'
            OpenMP thread count); does not change the result.
        mode: ``"reference"`` (compare with every earlier point of the
            cluster, the paper's code) or ``"kept_only"`` (only with kept ones).

    Returns:
        ``duplicate_of`` int64 ``[N]`` (-1 = kept, else global index of the
        earlier point it duplicates: kept with ``kept_only``, possibly removed
        itself with ``reference``); with ``return_assignments`` a tuple
        ``(duplicate_of, assignments)``.
    """
    x = l2_normalize(embeddings)
    n = x.shape[0]
    if keep not in ("hard", "easy"):
        raise ValueError(f"keep must be 'hard' or 'easy', got {keep!r}")
    _check_mode(mode)
    ranks = order_ranks(np.arange(n) if order_keys is None else order_keys, n)
    centroids, labels = fit_kmeans(
        x, min(k, n), spherical=True, niter=niter, seed=seed,
        max_points_per_centroid=max_points_per_centroid, init="kmeans++",
    )
    duplicate_of = semdedup_from_clusters(x, centroids, labels, eps, ranks, keep=keep, block=block, threads=threads,
                                          mode=mode)
    log.info("semdedup: removed %d / %d (eps=%g, k=%d, mode=%s)", int((duplicate_of >= 0).sum()), n, eps, k, mode)
    if return_assignments:
        return duplicate_of, labels
    return duplicate_of
