"""Diversity metrics on hand-checkable histograms."""

import numpy as np
import pytest

from curation.metrics import (
    class_balance,
    coverage,
    effective_num_clusters,
    entropy,
    histogram,
    normalized_entropy,
    summary,
)


def test_uniform_and_degenerate() -> None:
    uniform = np.repeat(np.arange(8), 5)
    assert normalized_entropy(uniform, 8) == pytest.approx(1.0)
    assert effective_num_clusters(uniform) == pytest.approx(8.0)
    assert normalized_entropy(np.zeros(40, int), 8) == pytest.approx(0.0)
    assert effective_num_clusters(np.zeros(40, int)) == pytest.approx(1.0)
    # empty reference clusters count against the normalised entropy
    assert normalized_entropy(uniform, 16) == pytest.approx(np.log(8) / np.log(16))


def test_known_entropy() -> None:
    counts = np.array([1, 1, 2])
    p = counts / 4
    assert entropy(counts) == pytest.approx(-(p * np.log(p)).sum())
    assert entropy(np.zeros(3)) == 0.0
    assert histogram(np.array([0, 2, 2]), 4).tolist() == [1, 0, 2, 0]


def test_coverage_and_balance() -> None:
    lab = np.array([0, 0, 0, 1, 3])
    assert coverage(lab, 4) == pytest.approx(0.75)
    assert coverage(lab, 4, min_count=2) == pytest.approx(0.25)
    assert class_balance(lab, 4) == 0.0  # class 2 missing
    assert class_balance(np.array([0, 0, 1, 1, 1, 1]), 2) == pytest.approx(0.5)
    s = summary(lab, 4)
    assert s["n"] == 5 and 0 < s["normalized_entropy"] < 1 and s["coverage"] == pytest.approx(0.75)
    with pytest.raises(ValueError):
        histogram(np.array([-1, 0]))
    with pytest.raises(ValueError):
        histogram(np.array([0, 5]), 4)
