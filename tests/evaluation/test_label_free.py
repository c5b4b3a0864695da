"""Label-free metrics against values worked out by hand from their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.evaluation.label_free import alignment, feature_std, label_free_metrics, rankme, uniformity


def _with_singular_values(values: list[float], n: int = 6, seed: int = 0) -> np.ndarray:
    """An [n, len(values)] matrix whose singular values are exactly ``values`` (random orthonormal bases)."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(n, len(values))))
    v, _ = np.linalg.qr(rng.normal(size=(len(values), len(values))))
    return u @ np.diag(values) @ v.T


def test_rankme_is_the_exponential_of_the_singular_value_entropy() -> None:
    # singular values 3 and 1: p = (3/4, 1/4), entropy = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.562335
    assert rankme(_with_singular_values([3.0, 1.0])) == pytest.approx(math.exp(0.5623351446), abs=1e-5)
    # d equal singular values: p = 1/d each, entropy ln d, RankMe = d
    assert rankme(_with_singular_values([2.0] * 5, n=8)) == pytest.approx(5.0, abs=1e-4)
    # rank one (every sample on one line): 1, whatever the dimension
    line = np.outer(np.arange(1, 9), np.array([1.0, -2.0, 0.5, 3.0]))
    assert rankme(line) == pytest.approx(1.0, abs=1e-4)
    # not centred: a constant offset is a direction of its own, as in the paper's definition
    assert rankme(np.ones((10, 4))) == pytest.approx(1.0, abs=1e-4)


def test_alignment_is_the_mean_squared_distance_of_normalised_views() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[0.0, 5.0], [0.0, 1.0]])  # first pair at 90 degrees (|e1 - e2|^2 = 2), second identical
    assert alignment(a, b) == pytest.approx((2.0 + 0.0) / 2)
    assert alignment(a, -a) == pytest.approx(4.0)  # antipodal views
    assert alignment(a, a * 3) == pytest.approx(0.0)  # scale does not matter: features are normalised


def test_uniformity_is_the_log_mean_gaussian_potential_over_distinct_pairs() -> None:
    # two antipodal points: one pair at squared distance 4 -> log exp(-2 * 4) = -8
    assert uniformity(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-8.0)
    # three points 120 degrees apart on a circle: every pair at squared distance 3 -> -6
    angles = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
    assert uniformity(np.stack([np.cos(angles), np.sin(angles)], 1)) == pytest.approx(-6.0)
    # pairs at squared distances 0 (same point twice) and 2, 2 (the third at 90 degrees): log((1 + 2e^-4) / 3)
    pts = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert uniformity(pts) == pytest.approx(math.log((1 + 2 * math.exp(-4)) / 3))
    assert uniformity(pts, t=1.0) == pytest.approx(math.log((1 + 2 * math.exp(-2)) / 3))


def test_feature_std_is_about_one_when_spread_and_zero_when_collapsed() -> None:
    # +-e1, +-e2: per-dimension std sqrt(0.5) each, times sqrt(2) -> exactly 1
    cross = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert feature_std(cross) == pytest.approx(1.0)
    assert feature_std(np.tile([[0.3, -2.0, 1.0]], (50, 1))) == pytest.approx(0.0, abs=1e-12)
    # many random directions on the sphere: close to 1 in any dimension
    z = np.random.default_rng(0).normal(size=(20000, 64))
    assert feature_std(z) == pytest.approx(1.0, abs=0.01)


def test_all_metrics_together_and_bad_input() -> None:
    z = np.random.default_rng(1).normal(size=(300, 16))
    out = label_free_metrics(z, z, z + 0.01)
    assert set(out) == {"rankme", "uniformity", "feature_std", "alignment"}
    assert 12 < out["rankme"] <= 16 and out["alignment"] < 1e-3 and -4 < out["uniformity"] < -3
    assert "alignment" not in label_free_metrics(z)
    with pytest.raises(ValueError, match="non-empty"):
        rankme(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="two samples"):
        uniformity(np.ones((1, 4)))
