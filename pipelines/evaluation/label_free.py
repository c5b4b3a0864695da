"""Label-free measures of an embedding: what can be said about an encoder when no label exists.

An uncurated collection has no labels, so kNN and linear probes need a separate labelled set.
Without one, these stand in (computed on a fixed random sample, on frozen features):

- ``rankme``: effective rank of the embedding matrix (Garrido et al. 2023, "RankMe"):
  ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / sum(s) + eps`` over its singular values ``s``.
  It ranges from 1 (every sample on one line) to min(N, D); higher tracks downstream accuracy
  within a method and across hyper-parameters, which is why sweeps may rank by it.
- ``alignment``: mean squared distance between the normalised features of two augmented views
  of the same image (Wang and Isola 2020, ``L_align`` with alpha = 2); 0 = views map together.
- ``uniformity``: ``log E exp(-t ||z_i - z_j||^2)`` over distinct pairs of normalised features
  (Wang and Isola 2020, ``L_uniform`` with t = 2); lower = more evenly spread on the sphere,
  -4 is its floor for antipodal pairs. Alignment alone is minimised by collapse; the pair is
  what the paper relates to downstream accuracy.
- ``feature_std``: mean per-dimension standard deviation of the normalised features times
  sqrt(D) (SimSiam's collapse indicator, Chen and He 2021, rescaled so that features spread
  evenly over the sphere give about 1 and a collapsed encoder, mapping every input to the same
  point, gives 0). The collapse alarm.

Pure numpy on [N, D] arrays: no torch, no Ray, so each is checked against hand-computed values.
"""

from __future__ import annotations

import numpy as np

#: RankMe's epsilon inside the logarithm (the paper's 1e-7): keeps zero singular values finite
RANKME_EPS = 1e-7


def _as_matrix(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{what}: expected a non-empty [N, D] feature matrix, got shape {x.shape}")
    return x


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Unit-norm rows (float64); a zero row stays zero instead of becoming NaN."""
    x = _as_matrix(x, "normalise_rows")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def rankme(features: np.ndarray, eps: float = RANKME_EPS) -> float:
    """Effective rank of the [N, D] embedding matrix as defined by RankMe (not centred, not normalised)."""
    s = np.linalg.svd(_as_matrix(features, "rankme"), compute_uv=False)
    total = s.sum()
    if total <= 0:  # an all-zero matrix: no direction at all
        return 1.0
    p = s / total + eps
    return float(np.exp(-np.sum(p * np.log(p))))


def alignment(view_a: np.ndarray, view_b: np.ndarray, alpha: float = 2.0) -> float:
    """``E ||z_a - z_b||^alpha`` over rows: row i of both matrices are views of the same image."""
    a, b = normalise_rows(view_a), normalise_rows(view_b)
    if a.shape != b.shape:
        raise ValueError(f"alignment: the two views must have the same shape, got {a.shape} and {b.shape}")
    return float(np.mean(np.linalg.norm(a - b, axis=1) ** alpha))


def uniformity(features: np.ndarray, t: float = 2.0, max_rows: int = 4096) -> float:
    """``log`` of the mean over distinct pairs i < j of ``exp(-t ||z_i - z_j||^2)``.

    Uses at most ``max_rows`` rows (the first ones: callers pass a random sample) so the N^2
    pair matrix stays bounded. Needs two rows at least.
    """
    z = normalise_rows(features)[:max_rows]
    if len(z) < 2:
        raise ValueError("uniformity: needs at least two samples")
    # ||a - b||^2 = 2 - 2 a.b for unit rows (clipped: rounding can make it slightly negative)
    sq = np.clip(2.0 - 2.0 * (z @ z.T), 0.0, 4.0)
    iu = np.triu_indices(len(z), k=1)
    values = -t * sq[iu]
    top = values.max()  # log-mean-exp, stable
    return float(top + np.log(np.mean(np.exp(values - top))))


def feature_std(features: np.ndarray) -> float:
    """Mean per-dimension std of the normalised features, times sqrt(D): ~1 spread, 0 collapsed."""
    z = normalise_rows(features)
    return float(np.mean(z.std(axis=0)) * np.sqrt(z.shape[1]))


def label_free_metrics(features: np.ndarray, view_a: np.ndarray | None = None,
                       view_b: np.ndarray | None = None) -> dict[str, float]:
    """All four on one sample: ``features`` of the plain (evaluation) view; ``view_a``/``view_b``
    of two augmented views of (a subset of) the same images, for alignment."""
    out = {"rankme": rankme(features), "uniformity": uniformity(features), "feature_std": feature_std(features)}
    if view_a is not None and view_b is not None:
        out["alignment"] = alignment(view_a, view_b)
    return out
