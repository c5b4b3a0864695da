"""Diversity/balance metrics of a curated subset.

Why these: curation should make the data *less redundant* and *more
balanced* without dropping whole concepts.  Measured on a fixed reference
clustering (or on class labels when they exist):

* normalised entropy ``H(p) / log K`` of the histogram over the ``K``
  reference clusters: 1 = perfectly uniform, 0 = everything in one cluster.
  ``K`` counts *all* reference clusters, empty ones included, so losing a
  cluster lowers the score;
* effective number of clusters ``exp(H)``: how many equally-sized clusters
  would have the same entropy (readable as "the data behaves like ~X
  concepts");
* coverage: fraction of the reference clusters that still have at least
  ``min_count`` points (did curation drop concepts?);
* class balance ``min_c n_c / max_c n_c`` over ``K`` classes (0 if a class is
  missing, 1 if all classes are equally large).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "histogram",
    "entropy",
    "normalized_entropy",
    "effective_num_clusters",
    "coverage",
    "class_balance",
    "summary",
]


def histogram(labels: np.ndarray, num_clusters: int | None = None) -> np.ndarray:
    """Counts per label in ``[0, num_clusters)`` (default ``max + 1``)."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be non-negative")
    k = int(labels.max()) + 1 if num_clusters is None and labels.size else int(num_clusters or 0)
    if labels.size and labels.max() >= k:
        raise ValueError(f"label {int(labels.max())} outside [0, {k})")
    return np.bincount(labels, minlength=k)[: max(k, 0)] if k else np.zeros(0, np.int64)


def entropy(counts: np.ndarray) -> float:
    """Shannon entropy (nats) of a count histogram; 0 for an empty one."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return 0.0
    p = c[c > 0] / total
    return float(-(p * np.log(p)).sum())


def normalized_entropy(labels: np.ndarray, num_clusters: int) -> float:
    """``H / log(num_clusters)`` of the label histogram (1 = uniform)."""
    if num_clusters < 2:
        return 1.0
    return entropy(histogram(labels, num_clusters)) / float(np.log(num_clusters))


def effective_num_clusters(labels: np.ndarray, num_clusters: int | None = None) -> float:
    """``exp(H)``: number of equal clusters with the same entropy."""
    return float(np.exp(entropy(histogram(labels, num_clusters))))


def coverage(labels: np.ndarray, num_clusters: int, min_count: int = 1) -> float:
    """Fraction of the ``num_clusters`` reference clusters with >= ``min_count`` points."""
    if num_clusters <= 0:
        return 0.0
    return float((histogram(labels, num_clusters) >= min_count).mean())


def class_balance(labels: np.ndarray, num_classes: int) -> float:
    """``min / max`` class count over all ``num_classes`` classes."""
    h = histogram(labels, num_classes)
    return float(h.min() / h.max()) if h.size and h.max() > 0 else 0.0


def summary(labels: np.ndarray, num_clusters: int) -> dict[str, float]:
    """All metrics above for one labelling, as a JSON-friendly dict."""
    return {
        "n": int(np.asarray(labels).size),
        "normalized_entropy": normalized_entropy(labels, num_clusters),
        "effective_num_clusters": effective_num_clusters(labels, num_clusters),
        "coverage": coverage(labels, num_clusters),
        "class_balance": class_balance(labels, num_clusters),
    }
