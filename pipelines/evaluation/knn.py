"""Weighted k-nearest-neighbour classification on frozen features.

Why this protocol: a kNN vote needs no training and no hyper-parameter search
beyond (k, T), so it measures the embedding itself rather than the skill of a
downstream optimiser. The weighted vote (each neighbour adds exp(sim / T) to
its class) is the one of InstDisc (Wu et al. 2018), reused by DINO and by the
LightlySSL benchmark tables; using the same (k, T) lets our figures stand next
to the published ones, which is why each protocol carries a printable name.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

__all__ = [
    "KnnProtocol",
    "LIGHTLY_CIFAR10",
    "DINO",
    "l2_normalise",
    "weighted_knn_predict",
    "knn_accuracy",
]


@dataclass(frozen=True)
class KnnProtocol:
    """A named (k, temperature) pair, so reports say which published table a figure matches."""

    k: int
    temperature: float
    name: str


LIGHTLY_CIFAR10 = KnnProtocol(200, 0.1, "kNN k=200 T=0.1 (LightlySSL CIFAR-10 protocol)")
DINO = KnnProtocol(20, 0.07, "kNN k=20 T=0.07 (DINO protocol)")


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Return float32, C-contiguous, unit-norm rows.

    Inner product of unit vectors is cosine similarity, which is what the
    protocol is defined on; faiss also requires float32 contiguous input.
    Zero rows stay zero (they are then equally (dis)similar to everything)
    instead of turning into NaN.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D feature matrix, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def weighted_knn_predict(
    bank: np.ndarray,
    bank_labels: np.ndarray,
    queries: np.ndarray,
    k: int,
    temperature: float,
    num_classes: int | None = None,
    batch_size: int = 4096,
) -> np.ndarray:
    """Predict a label for each query by the exp(sim / T)-weighted vote of its k nearest bank rows.

    Args:
        bank: [N, D] features of the labelled set (normalised here).
        bank_labels: [N] integer labels in [0, num_classes).
        queries: [M, D] features to classify (normalised here).
        k: neighbours per query; clipped to N so tiny banks (few-shot) still work.
        temperature: softmax temperature T; small T makes the closest neighbours dominate.
        num_classes: number of classes; inferred as max label + 1 when None.
        batch_size: queries searched at a time, to bound the [batch, k, C] vote tensor.

    Returns:
        [M] int64 predicted labels. Ties in the vote go to the lowest class id.

    Exact search (IndexFlatIP) is used because evaluation must be
    deterministic and bank sizes here (≤ a few 10^5) make it cheap enough.
    """
    bank_labels = np.asarray(bank_labels).astype(np.int64, copy=False)
    num_classes = _checked_num_classes(bank, bank_labels, k, temperature, num_classes)

    bank_n = l2_normalise(bank)
    query_n = l2_normalise(queries)
    if bank_n.shape[1] != query_n.shape[1]:
        raise ValueError("bank and queries differ in feature dimension")
    k = min(int(k), bank_n.shape[0])

    index = faiss.IndexFlatIP(bank_n.shape[1])
    index.add(bank_n)

    preds = np.empty(query_n.shape[0], dtype=np.int64)
    for start in range(0, query_n.shape[0], batch_size):
        q = query_n[start : start + batch_size]
        sims, idx = index.search(q, k)  # [b, k] each, sorted by similarity
        # exp(sim / T); subtracting the row max does not change the argmax but
        # avoids overflow for small T (sim/T can reach 1/0.07 ≈ 14, fine, but
        # callers may pass smaller T).
        logits = sims.astype(np.float64) / temperature
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        votes = np.zeros((q.shape[0], num_classes), dtype=np.float64)
        rows = np.repeat(np.arange(q.shape[0]), k)
        np.add.at(votes, (rows, bank_labels[idx].ravel()), weights.ravel())
        preds[start : start + q.shape[0]] = votes.argmax(axis=1)
    return preds


def _checked_num_classes(bank: np.ndarray, bank_labels: np.ndarray, k: int, temperature: float,
                         num_classes: int | None) -> int:
    """The number of classes, after refusing arguments the vote cannot use (each ValueError names the
    argument) before any search is run."""
    if bank.shape[0] != bank_labels.shape[0]:
        raise ValueError("bank and bank_labels differ in length")
    if bank.shape[0] == 0:
        raise ValueError("empty bank")
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    if k < 1:
        raise ValueError("k must be >= 1")
    if bank_labels.min() < 0:
        raise ValueError("labels must be non-negative")
    if num_classes is None:
        num_classes = int(bank_labels.max()) + 1
    elif bank_labels.max() >= num_classes:
        raise ValueError("a bank label is >= num_classes")
    return num_classes


def knn_accuracy(
    bank: np.ndarray,
    bank_labels: np.ndarray,
    queries: np.ndarray,
    query_labels: np.ndarray,
    protocol: KnnProtocol,
) -> float:
    """Top-1 accuracy in [0, 1] of the weighted kNN vote under a named protocol."""
    query_labels = np.asarray(query_labels).astype(np.int64, copy=False)
    num_classes = int(max(np.max(bank_labels), np.max(query_labels))) + 1
    preds = weighted_knn_predict(
        bank, bank_labels, queries, protocol.k, protocol.temperature, num_classes=num_classes
    )
    return float(np.mean(preds == query_labels))
