"""k-means on top of ``faiss.Clustering`` with every knob set on purpose.

Why a wrapper instead of calling ``faiss.Kmeans(d, k).train(x)`` directly:
faiss' defaults are tuned for building IVF coarse quantisers, not for data
curation, and three of them silently change results:

* **random init** (``init_method=RANDOM``): k points drawn uniformly, so dense
  modes get many centroids and the tail gets few -- exactly the imbalance the
  curation pipeline is trying to measure and correct.  We default to k-means++
  (D^2 sampling), run by us in numpy on a bounded sample so its cost (O(m k d),
  sequential over k) does not dominate at k=1000, and hand the seeds to faiss
  as ``init_centroids``.
* **25 iterations**: fine, but we make ``niter`` a required decision.
* **silent subsampling to 256*k points** (``max_points_per_centroid``): faiss
  prints nothing unless verbose.  We subsample *ourselves*, with our own seeded
  RNG, log it, and switch faiss' own subsampling off.  Every point (not just
  the sample) is then assigned to its nearest centroid with a flat index.

Determinism: for a fixed ``seed`` (and fixed input) the output is identical
run to run: our sampling uses ``numpy.random.default_rng(seed)``, faiss gets
``seed`` too (it only uses it to split empty clusters since it never
initialises nor subsamples here), and flat-index search is exact.
"""

from __future__ import annotations

import contextlib
import logging
from typing import ContextManager, Literal, overload

import faiss
import numpy as np

log = logging.getLogger(__name__)

__all__ = ["fit_kmeans", "kmeanspp_init", "assign", "l2_normalize", "blas_threads"]

# Upper bound on the sample k-means++ seeding looks at (k-means++ is
# sequential in k, so its cost is m*k*d with no batching across centroids).
_KMEANSPP_POINTS_PER_CENTROID = 32
_ASSIGN_CHUNK = 65536
_NORMALIZE_CHUNK = 65536


def blas_threads(n: int) -> ContextManager:
    """Context that holds every loaded BLAS library (numpy's, scipy's and
    faiss' OpenBLAS) to ``n`` threads, through ``threadpoolctl`` (installed with
    scikit-learn); a no-op if it is missing.  Process-wide while it lasts."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn brings it
        return contextlib.nullcontext()
    return threadpool_limits(limits=int(n), user_api="blas")


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Return a float32 copy of ``x`` with unit-L2 rows (zero rows stay zero).

    Works in row chunks, so the only ``[N, D]`` allocation is the output
    (``np.linalg.norm`` over the whole array would add an ``[N, D]``
    temporary: 512 MB at 1M x 128)."""
    x = np.asarray(x)
    if x.ndim != 2:  # not the embedding case: the plain formula
        x = x.astype(np.float32, copy=False)
        return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)).astype(np.float32, copy=False)
    out = np.empty(x.shape, dtype=np.float32)
    for s in range(0, x.shape[0], _NORMALIZE_CHUNK):
        xc = np.asarray(x[s : s + _NORMALIZE_CHUNK], dtype=np.float32)
        norms = np.linalg.norm(xc, axis=1, keepdims=True)
        np.divide(xc, np.maximum(norms, eps), out=out[s : s + len(xc)])
    return out


def kmeanspp_init(
    x: np.ndarray, k: int, rng: np.random.Generator, *, spherical: bool = False
) -> np.ndarray:
    """Classic k-means++ (Arthur & Vassilvitskii 2007) seeding on ``x``.

    The first centre is uniform; each next one is drawn with probability
    proportional to the squared distance to the nearest centre chosen so far.
    For ``spherical`` the distance is ``2 - 2 cos`` (same ordering on unit
    vectors).  Returns a ``[k, d]`` float32 array.

    BLAS runs single-threaded here: each of the ``k`` sequential steps is one
    small ``[m, d] x [d]`` product, and waking a second BLAS thread for it
    costs more CPU than it saves, for the same output (figures:
    docs/BENCHMARKS.md, ``bench/code_figures.py kmeanspp_threads``).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    if k > n:
        raise ValueError(f"k={k} > number of points {n}")
    with blas_threads(1):
        return _kmeanspp(x, k, rng, spherical)


def _kmeanspp(x: np.ndarray, k: int, rng: np.random.Generator, spherical: bool) -> np.ndarray:
    n = x.shape[0]
    sq = np.einsum("ij,ij->i", x, x)
    centers = np.empty((k, x.shape[1]), dtype=np.float32)
    first = int(rng.integers(n))
    centers[0] = x[first]
    d2 = np.maximum(sq + sq[first] - 2.0 * (x @ x[first]), 0.0).astype(np.float64)
    for i in range(1, k):
        total = d2.sum()
        if total <= 0.0:  # fewer distinct points than k: fall back to uniform
            idx = int(rng.integers(n))
        else:
            # inverse-CDF draw; searchsorted keeps it O(n) per centre
            cdf = np.cumsum(d2)
            idx = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
            idx = min(idx, n - 1)
        centers[i] = x[idx]
        new = np.maximum(sq + sq[idx] - 2.0 * (x @ x[idx]), 0.0)
        np.minimum(d2, new, out=d2)
    if spherical:
        centers = l2_normalize(centers)
    return centers


def assign(
    x: np.ndarray, centroids: np.ndarray, *, spherical: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row of ``x`` (exact, chunked flat search).

    Returns ``(assignments int64 [N], score float32 [N])`` where score is the
    squared L2 distance, or the inner product (cosine on unit vectors) if
    ``spherical``.
    """
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    d = centroids.shape[1]
    index = faiss.IndexFlatIP(d) if spherical else faiss.IndexFlatL2(d)
    index.add(centroids)
    n = x.shape[0]
    labels = np.empty(n, dtype=np.int64)
    scores = np.empty(n, dtype=np.float32)
    for s in range(0, n, _ASSIGN_CHUNK):
        xb = np.ascontiguousarray(x[s : s + _ASSIGN_CHUNK], dtype=np.float32)
        dist, lab = index.search(xb, 1)
        labels[s : s + len(xb)] = lab[:, 0]
        scores[s : s + len(xb)] = dist[:, 0]
    return labels, scores


@overload
def fit_kmeans(
    x: np.ndarray, k: int, *, spherical: bool = ..., niter: int = ..., seed: int = ...,
    max_points_per_centroid: int | None = ..., init: Literal["kmeans++", "random"] = ...,
    return_scores: Literal[False] = ...,
) -> tuple[np.ndarray, np.ndarray]: ...


@overload
def fit_kmeans(
    x: np.ndarray, k: int, *, spherical: bool = ..., niter: int = ..., seed: int = ...,
    max_points_per_centroid: int | None = ..., init: Literal["kmeans++", "random"] = ...,
    return_scores: Literal[True],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def fit_kmeans(
    x: np.ndarray,
    k: int,
    *,
    spherical: bool = False,
    niter: int = 20,
    seed: int = 0,
    max_points_per_centroid: int | None = 256,
    init: Literal["kmeans++", "random"] = "kmeans++",
    return_scores: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lloyd k-means (faiss) with explicit subsampling and init.

    Args:
        x: ``[N, D]`` data (converted to float32).  For ``spherical`` pass
            L2-normalised rows (centroids are renormalised each iteration and
            points are assigned by inner product).
        k: number of clusters (``k <= N``).
        spherical: cosine k-means.
        niter: Lloyd iterations.
        seed: seeds sampling, init and faiss.
        max_points_per_centroid: train on a uniform sample of at most
            ``k * max_points_per_centroid`` points (logged at INFO when it
            happens); ``None`` trains on everything.
        init: ``"kmeans++"`` (our D^2 seeding on <= 32k points sample) or
            ``"random"`` (k distinct training points, faiss' default).
        return_scores: also return each point's squared distance (or inner
            product if ``spherical``) to its centroid, saving a second pass.

    Returns:
        ``(centroids float32 [k, D], assignments int64 [N])`` -- assignments of
        *all* N points, not only the training sample (plus ``scores`` float32
        ``[N]`` with ``return_scores``).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    k = int(k)
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= N, got k={k}, N={n}")
    if init not in ("kmeans++", "random"):
        raise ValueError(f"unknown init {init!r}")
    rng = np.random.default_rng(seed)

    train = x
    if max_points_per_centroid is not None and n > k * max_points_per_centroid:
        m = k * int(max_points_per_centroid)
        sel = np.sort(rng.choice(n, size=m, replace=False))
        train = x[sel]
        log.info(
            "fit_kmeans: training on a uniform sample of %d / %d points "
            "(k=%d, max_points_per_centroid=%d)",
            m, n, k, max_points_per_centroid,
        )
    if train.shape[0] < 39 * k:
        log.info("fit_kmeans: only %.1f training points per centroid", train.shape[0] / k)

    if init == "kmeans++":
        m = min(train.shape[0], max(k, _KMEANSPP_POINTS_PER_CENTROID * k))
        pool = train if m == train.shape[0] else train[np.sort(rng.choice(train.shape[0], m, replace=False))]
        init_c = kmeanspp_init(pool, k, rng, spherical=spherical)
    else:
        init_c = train[np.sort(rng.choice(train.shape[0], size=k, replace=False))].copy()
        if spherical:
            init_c = l2_normalize(init_c)

    if niter > 0 and k > 1:
        cp = faiss.ClusteringParameters()
        cp.niter = int(niter)
        cp.nredo = 1
        cp.spherical = bool(spherical)
        cp.seed = int(seed) & 0x7FFFFFFF
        cp.verbose = False
        cp.min_points_per_centroid = 1  # we log low counts ourselves
        cp.max_points_per_centroid = int(max(train.shape[0] // k + 1, 1) * 2)  # never subsample again
        clus = faiss.Clustering(d, k, cp)
        faiss.copy_array_to_vector(np.ascontiguousarray(init_c).ravel(), clus.centroids)
        index = faiss.IndexFlatIP(d) if spherical else faiss.IndexFlatL2(d)
        clus.train(train, index)
        centroids = faiss.vector_float_to_array(clus.centroids).reshape(k, d).copy()
    else:
        centroids = init_c
    labels, scores = assign(x, centroids, spherical=spherical)
    if return_scores:
        return centroids.astype(np.float32, copy=False), labels, scores
    return centroids.astype(np.float32, copy=False), labels
