"""Water-filling quotas and top-down balanced sampling."""

import numpy as np
import pytest

from curation.balanced import balanced_sample, water_fill
from curation.metrics import normalized_entropy


def test_water_fill_exact_and_capped() -> None:
    rng = np.random.default_rng(0)
    sizes = np.array([1, 5, 100, 3, 50])
    q = water_fill(sizes, 40, rng)
    assert q.sum() == 40
    assert np.all(q <= sizes)
    assert q[[0, 1, 3]].tolist() == [1, 5, 3]  # small clusters give everything
    assert sorted(q[[2, 4]].tolist()) == [15, 16]  # cap 15, one leftover point
    assert np.array_equal(water_fill(sizes, 1000, rng), sizes)
    assert water_fill(sizes, 0, rng).sum() == 0


@pytest.mark.parametrize("seed", range(5))
def test_water_fill_random_sizes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 200, size=rng.integers(1, 30))
    target = int(rng.integers(0, sizes.sum() + 1))
    q = water_fill(sizes, target, rng)
    assert q.sum() == target and np.all(q <= sizes) and np.all(q >= 0)
    # balanced: any cluster below its size differs from the max quota by <= 1
    unfilled = q < sizes
    if unfilled.any():
        assert q.max() - q[unfilled].min() <= 1


def _longtail(seed: int = 0):
    """Two-level hierarchy over a long-tailed labelled set (labels = leaf clusters)."""
    rng = np.random.default_rng(seed)
    sizes = np.maximum((3000 * 0.6 ** np.arange(16)).astype(int), 5)
    labels = np.repeat(np.arange(16), sizes)
    labels = labels[rng.permutation(len(labels))]
    level1 = labels * 4 + rng.integers(0, 4, len(labels))  # 4 sub-clusters per class
    level2 = labels
    level3 = labels // 4
    return labels, [level1, level2, level3]


def test_hits_target_exactly_and_caps_big_clusters() -> None:
    labels, levels = _longtail()
    n = len(labels)
    for target in (1, 97, n // 2, n - 1, n, n + 10):
        mask = balanced_sample(levels, target, seed=0)
        assert mask.dtype == bool and mask.shape == (n,)
        assert mask.sum() == min(target, n)
    mask = balanced_sample(levels, 400, seed=0)
    per_class = np.bincount(labels[mask], minlength=16)
    full = np.bincount(labels, minlength=16)
    assert per_class[0] < 0.1 * full[0]  # the head is capped hard
    assert np.all(per_class[full <= 10] == full[full <= 10])  # tiny tail classes kept whole


def test_balanced_beats_random_on_entropy() -> None:
    labels, levels = _longtail()
    n = len(labels)
    mask = balanced_sample(levels, n // 2, seed=1)
    rnd = np.zeros(n, dtype=bool)
    rnd[np.random.default_rng(1).choice(n, n // 2, replace=False)] = True
    h_bal = normalized_entropy(labels[mask], 16)
    h_rnd = normalized_entropy(labels[rnd], 16)
    assert h_bal > h_rnd + 0.05, (h_bal, h_rnd)


def test_deterministic_and_seed_dependent() -> None:
    _, levels = _longtail()
    a = balanced_sample(levels, 1000, seed=3)
    assert np.array_equal(a, balanced_sample(levels, 1000, seed=3))
    assert not np.array_equal(a, balanced_sample(levels, 1000, seed=4))


def test_single_level_is_plain_water_fill() -> None:
    lab = np.repeat([0, 1, 2], [10, 100, 1000])
    mask = balanced_sample([lab], 60, seed=0)
    assert np.bincount(lab[mask], minlength=3).tolist() == [10, 25, 25]
