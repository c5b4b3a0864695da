"""SemDeDup: planted near-copies removed, distinct points kept, deterministic."""

import numpy as np
import pytest

from curation.kmeans import fit_kmeans, l2_normalize
from curation.semdedup import semdedup, semdedup_cluster, semdedup_from_clusters


def _data(seed: int = 0, n: int = 2000, d: int = 48, n_copies: int = 300):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(8, d))
    base = centers[rng.integers(0, 8, n)] + 0.8 * rng.normal(size=(n, d))
    src = rng.choice(n, n_copies, replace=False)
    copies = base[src] + 0.02 * rng.normal(size=(n_copies, d))
    return np.concatenate([base, copies]).astype(np.float32), src


def test_removes_planted_copies_keeps_distinct() -> None:
    x, src = _data()
    n = 2000
    dup = semdedup(x, k=8, eps=0.01, seed=0)
    assert dup.dtype == np.int64 and dup.shape == (len(x),)
    removed = dup >= 0
    orig_removed, copy_removed = removed[src], removed[n:]
    # exactly one member of each (original, copy) pair survives
    assert np.all(orig_removed ^ copy_removed)
    # no distinct point outside the planted pairs is touched
    untouched = np.setdiff1d(np.arange(n), src)
    assert not removed[untouched].any()
    # every removal points at a kept point above the cosine threshold
    xn = l2_normalize(x)
    r = np.flatnonzero(removed)
    assert np.all(dup[dup[r]] == -1)
    assert np.all(np.einsum("ij,ij->i", xn[r], xn[dup[r]]) > 0.99)


def test_deterministic_and_keep_rule() -> None:
    x, src = _data(seed=1)
    a = semdedup(x, k=8, eps=0.01, seed=3)
    b = semdedup(x, k=8, eps=0.01, seed=3)
    assert np.array_equal(a, b)
    hard, labels = semdedup(x, k=8, eps=0.01, seed=3, keep="hard", return_assignments=True)
    easy = semdedup(x, k=8, eps=0.01, seed=3, keep="easy")
    assert (hard >= 0).sum() == (easy >= 0).sum() == len(src)
    # "hard" keeps the pair member with the lower cosine to its centroid
    cents, lab = fit_kmeans(l2_normalize(x), 8, spherical=True, niter=20, seed=3)
    assert np.array_equal(lab, labels)
    xn = l2_normalize(x)
    cos = np.einsum("ij,ij->i", xn, cents[lab])
    rem = np.flatnonzero(hard >= 0)
    same = lab[rem] == lab[hard[rem]]
    assert same.all()
    assert np.all(cos[hard[rem]] <= cos[rem])
    rem_e = np.flatnonzero(easy >= 0)
    assert np.all(cos[easy[rem_e]] >= cos[rem_e])


def test_order_keys_break_exact_ties() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16)).astype(np.float32)
    x = np.concatenate([x, x[:10]])  # exact copies: identical cosine to centroid
    keys = np.arange(210)
    keys[200:] = -np.arange(10, 0, -1)  # copies have the smaller keys
    dup = semdedup(x, k=4, eps=1e-4, seed=0, order_keys=keys)
    assert np.all(dup[:10] == np.arange(200, 210))
    assert np.all(dup[200:] == -1)


def _chain(angles_deg: list[float]) -> np.ndarray:
    th = np.deg2rad(angles_deg)
    return np.stack([np.cos(th), np.sin(th)], axis=1).astype(np.float32)


def test_chain_a_b_c_reference_removes_both_kept_only_keeps_c() -> None:
    """a-b-c: cos(a,b) and cos(b,c) above the threshold, cos(a,c) below.  The paper's reference code
    compares c with every earlier point, so b (dup of a) and c (dup of b) both go; comparing only with
    kept points keeps c, since its one near neighbour b is gone."""
    x = _chain([0.0, 5.0, 10.0])
    thr = np.cos(np.deg2rad(7.0))
    assert semdedup_cluster(x, thr).tolist() == [-1, 0, 1]  # the default is the reference rule
    assert semdedup_cluster(x, thr, mode="reference").tolist() == [-1, 0, 1]
    assert semdedup_cluster(x, thr, mode="kept_only").tolist() == [-1, 0, -1]
    # the same chain through the whole pass (one cluster; keep="easy" visits a, b, c in that order)
    centroid = np.array([[1.0, 0.0]], dtype=np.float32)
    labels, ranks = np.zeros(3, dtype=np.int64), np.arange(3)
    ref = semdedup_from_clusters(x, centroid, labels, 1 - thr, ranks, keep="easy")
    kept_only = semdedup_from_clusters(x, centroid, labels, 1 - thr, ranks, keep="easy", mode="kept_only")
    assert ref.tolist() == [-1, 0, 1] and kept_only.tolist() == [-1, 0, -1]
    with pytest.raises(ValueError, match="reference, kept_only"):
        semdedup_cluster(x, thr, mode="greedy")


@pytest.mark.parametrize("mode", ["reference", "kept_only"])
def test_block_size_does_not_change_the_result(mode: str) -> None:
    rng = np.random.default_rng(2)
    y = l2_normalize(rng.normal(size=(50, 8)) )
    y = l2_normalize(np.concatenate([y, y + 0.05 * rng.normal(size=y.shape), y + 0.05 * rng.normal(size=y.shape)]))
    ref = semdedup_cluster(y, 0.98, block=10_000, mode=mode)
    assert (ref >= 0).sum() > 40
    for blk in (1, 7, 64):
        assert np.array_equal(semdedup_cluster(y, 0.98, block=blk, mode=mode), ref)


def _kept_only_oracle(x: np.ndarray, threshold: float) -> np.ndarray:
    """The rule, written the slow obvious way: visit j in order; j is removed iff
    its best cosine to an earlier *kept* point exceeds ``threshold``, and then
    points at that best kept point (the earliest one on ties)."""
    sim = x @ x.T
    kept: list[int] = []
    dup = np.full(len(x), -1, dtype=np.int64)
    for j in range(len(x)):
        if kept:
            s = sim[kept, j]
            p = int(np.argmax(s))
            if s[p] > threshold:
                dup[j] = kept[p]
                continue
        kept.append(j)
    return dup


def _reference_oracle(x: np.ndarray, threshold: float) -> np.ndarray:
    """SemDeDup's reference rule, the slow way: j is removed iff its best cosine to *any* earlier point
    exceeds ``threshold`` (the column max of the strictly upper triangle), pointing at that point."""
    sim = x @ x.T
    dup = np.full(len(x), -1, dtype=np.int64)
    for j in range(1, len(x)):
        p = int(np.argmax(sim[:j, j]))
        if sim[p, j] > threshold:
            dup[j] = p
    return dup


def _redundant_cluster(seed: int, n_base: int = 150, d: int = 32) -> np.ndarray:
    """Unit vectors with groups of 1-5 near-copies, shuffled so that groups
    straddle block boundaries."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_base, d))
    reps = rng.integers(1, 6, n_base)
    x = np.repeat(base, reps, axis=0) + 0.02 * rng.normal(size=(reps.sum(), d))
    return l2_normalize(x[rng.permutation(len(x))])


def _same_up_to_rounding(x: np.ndarray, got: np.ndarray, want: np.ndarray) -> bool:
    """Same removals; a target may differ only where two earlier points tie to float rounding
    (near-copies of one base: the block shapes change how the products round)."""
    if not np.array_equal(got >= 0, want >= 0):
        return False
    j = np.flatnonzero(got != want)
    return bool(np.all(np.abs(np.einsum("ij,ij->i", x[j], x[got[j]]) - np.einsum("ij,ij->i", x[j], x[want[j]])) < 1e-6))


@pytest.mark.parametrize(("mode", "oracle"), [("kept_only", _kept_only_oracle), ("reference", _reference_oracle)])
def test_cluster_pass_matches_its_oracle_for_any_block(mode: str, oracle) -> None:
    for seed in range(3):
        x = _redundant_cluster(seed)
        ref = oracle(x, 0.98)
        assert 100 < (ref >= 0).sum() < len(x) - 100
        for blk in (1, 2, 7, 64, 100, 10_000):
            assert _same_up_to_rounding(x, semdedup_cluster(x, 0.98, block=blk, mode=mode), ref), (seed, blk)


def test_reference_rule_removes_at_least_what_kept_only_removes() -> None:
    x = _redundant_cluster(0)
    ref, kept_only = semdedup_cluster(x, 0.98), semdedup_cluster(x, 0.98, mode="kept_only")
    assert np.all((ref >= 0) | (kept_only < 0))  # removed by kept_only => removed by reference
    # every chain of reference targets ends at a kept point
    for j in np.flatnonzero(ref >= 0):
        while ref[j] >= 0:
            assert ref[j] < j
            j = ref[j]


def test_kept_only_target_is_best_kept_point_across_blocks() -> None:
    thr = float(np.cos(np.deg2rad(7.0)))
    # row 2 is removed (dup of row 0), so row 3 must point at row 0 even
    # though row 2 is closer: only kept points are targets
    th = np.deg2rad([0.0, 40.0, 5.0, 6.0])
    x = np.stack([np.cos(th), np.sin(th)], axis=1).astype(np.float32)
    expected = [-1, -1, 0, 0]
    assert _kept_only_oracle(x, thr).tolist() == expected
    for blk in (1, 2, 3, 4):
        assert semdedup_cluster(x, thr, block=blk, mode="kept_only").tolist() == expected
    # now row 2 is kept (8 degrees from row 0) and is the best match of row 3;
    # row 0, in an earlier block for block=2, is above the threshold too
    th = np.deg2rad([0.0, 40.0, 8.0, 6.0])
    x = np.stack([np.cos(th), np.sin(th)], axis=1).astype(np.float32)
    expected = [-1, -1, -1, 2]
    assert _kept_only_oracle(x, thr).tolist() == expected
    for blk in (1, 2, 3, 4):
        assert semdedup_cluster(x, thr, block=blk, mode="kept_only").tolist() == expected


def test_threads_do_not_change_result() -> None:
    x, _ = _data(seed=2)
    xn = l2_normalize(x)
    cents, lab = fit_kmeans(xn, 8, spherical=True, niter=10, seed=0)
    ranks = np.arange(len(x))
    one = semdedup_from_clusters(xn, cents, lab, 0.01, ranks, threads=1)
    assert (one >= 0).sum() > 0
    for t in (2, 3):
        assert np.array_equal(semdedup_from_clusters(xn, cents, lab, 0.01, ranks, threads=t), one)
    assert np.array_equal(semdedup(x, k=8, eps=0.01, seed=0, threads=1), semdedup(x, k=8, eps=0.01, seed=0, threads=2))
