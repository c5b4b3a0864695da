"""Hierarchical k-means with resampling, and the k-means wrapper under it."""

import logging

import numpy as np
import pytest

from curation.hierarchical import closest_per_cluster, hierarchical_kmeans
from curation.kmeans import fit_kmeans, kmeanspp_init


def _blobs(seed: int = 0, k: int = 12, n: int = 6000, d: int = 16):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 6
    lab = rng.integers(0, k, n)
    return (centers[lab] + rng.normal(size=(n, d))).astype(np.float32), lab


def _longtail(seed: int = 0, d: int = 16):
    """One dense blob holding 80 % of the points plus 19 sparse ones."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, d)) * 8
    sizes = [8000] + [100] * 19
    lab = np.repeat(np.arange(20), sizes)
    return (centers[lab] + rng.normal(size=(len(lab), d))).astype(np.float32), lab


def test_fit_kmeans_recovers_blobs_and_is_deterministic(caplog: pytest.LogCaptureFixture) -> None:
    x, lab = _blobs()
    with caplog.at_level(logging.INFO, logger="curation.kmeans"):
        c1, a1 = fit_kmeans(x, 12, niter=20, seed=1, max_points_per_centroid=100)
    assert any("uniform sample of 1200 / 6000" in r.getMessage() for r in caplog.records)
    c2, a2 = fit_kmeans(x, 12, niter=20, seed=1, max_points_per_centroid=100)
    assert np.array_equal(a1, a2) and np.array_equal(c1, c2)
    assert c1.shape == (12, 16) and a1.shape == (6000,) and a1.dtype == np.int64
    # purity: each found cluster is (almost) one true blob
    purity = sum(np.bincount(lab[a1 == c]).max() for c in range(12) if (a1 == c).any()) / len(lab)
    assert purity > 0.9
    c3, _ = fit_kmeans(x, 12, niter=20, seed=2, max_points_per_centroid=100)
    assert not np.array_equal(c1, c3)


def _purity(a: np.ndarray, lab: np.ndarray) -> float:
    return sum(np.bincount(lab[a == c]).max() for c in np.unique(a)) / len(lab)


def test_kmeanspp_beats_random_init_on_average() -> None:
    x, lab = _blobs()
    pp = [_purity(fit_kmeans(x, 12, niter=20, seed=s, init="kmeans++")[1], lab) for s in range(6)]
    rnd = [_purity(fit_kmeans(x, 12, niter=20, seed=s, init="random")[1], lab) for s in range(6)]
    assert np.mean(pp) > np.mean(rnd) + 0.03


def test_kmeanspp_spreads_seeds() -> None:
    x, lab = _blobs(k=12)
    rng = np.random.default_rng(0)
    seeds = kmeanspp_init(x, 12, rng)
    d = ((x[:, None, :] - seeds[None]) ** 2).sum(-1)
    covered = len(np.unique(lab[d.argmin(0)]))  # blob of each seed's nearest point
    assert covered >= 10  # random init would typically hit ~8 distinct blobs


def test_hierarchy_shapes_tree_and_determinism() -> None:
    x, _ = _blobs(n=4000)
    h = hierarchical_kmeans(x, [40, 8, 3], resampling_steps=2, r=10, niter=10, seed=1)
    assert [len(a) for a in h.assignments] == [4000] * 3
    assert [c.shape for c in h.centroids] == [(40, 16), (8, 16), (3, 16)]
    assert [len(p) for p in h.parents] == [40, 8]
    for t in range(2):
        # nested: a level-t cluster lies inside exactly one level-(t+1) cluster
        assert np.array_equal(h.parents[t][h.assignments[t]], h.assignments[t + 1])
    assert np.allclose(np.linalg.norm(h.centroids[0], axis=1), 1.0, atol=1e-4)
    h2 = hierarchical_kmeans(x, [40, 8, 3], resampling_steps=2, r=10, niter=10, seed=1)
    for a, b in zip(h.assignments, h2.assignments):
        assert np.array_equal(a, b)
    with pytest.raises(ValueError):
        hierarchical_kmeans(x, [5, 10])


def test_closest_per_cluster() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    score = np.array([3.0, 1.0, 2.0, 5.0, 4.0, 9.0])
    assert closest_per_cluster(labels, score, 2, larger_is_closer=False).tolist() == [1, 2, 3, 4, 5]
    assert closest_per_cluster(labels, score, 1, larger_is_closer=True).tolist() == [0, 3, 5]


def test_resampling_changes_centroids_and_keeps_rare_blobs() -> None:
    x, lab = _longtail()
    kw = dict(r=20, niter=20, seed=0, spherical=False)
    plain = hierarchical_kmeans(x, [40], resampling_steps=0, **kw)
    resampled = hierarchical_kmeans(x, [40], resampling_steps=3, **kw)
    assert not np.allclose(plain.centroids[0], resampled.centroids[0])
    a = resampled.assignments[0]
    majority = {int(np.bincount(lab[a == c]).argmax()) for c in np.unique(a)}
    assert majority == set(range(20)), "every rare blob still owns a cluster"
    assert len(np.unique(a)) >= 35  # resampling must not collapse clusters


def _centroids_on_dense_blob(centroids: np.ndarray, x: np.ndarray, lab: np.ndarray) -> int:
    """How many centroids lie nearer to the dense blob's mean than to any rare blob's."""
    means = np.stack([x[lab == b].mean(0) for b in range(lab.max() + 1)])
    nearest = ((centroids[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    return int((nearest == 0).sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_resampling_moves_centroids_off_the_dense_blob(seed: int) -> None:
    """Vo et al.'s resampling: a fresh k-means++ fit on the r points closest to each centroid, then
    every point reassigned.  Plain k-means puts 15-18 of 40 centroids on the blob that holds 80 % of
    the points; three resampling steps leave 1-2 there (restarting Lloyd from the current centroids
    left the plain run's count unchanged)."""
    x, lab = _longtail()
    kw = dict(r=20, niter=20, seed=seed, spherical=False)
    plain = hierarchical_kmeans(x, [40], resampling_steps=0, **kw)
    resampled = hierarchical_kmeans(x, [40], resampling_steps=3, **kw)
    bound = 8
    assert _centroids_on_dense_blob(plain.centroids[0], x, lab) > bound
    assert _centroids_on_dense_blob(resampled.centroids[0], x, lab) <= bound
