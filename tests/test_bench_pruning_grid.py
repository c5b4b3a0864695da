"""bench/pruning_grid.py's summary and verdicts: the figures issue #33 reports are read off these."""

from __future__ import annotations

import pytest

from bench.pruning_grid import noise_threshold, summarise, verdicts


def _row(r: float, strategy: str, steps: int, seed: int, knn: float, tail: float) -> dict:
    return {"redundancy": r, "strategy": strategy, "max_steps": steps, "seed": seed, "knn_top1": knn,
            "knn_tail_top1": tail, "train_seconds": 10.0, "reembed_seconds": 1.0, "select_seconds": 0.5}


def test_mean_and_spread_over_seeds_per_cell() -> None:
    rows = [_row(0.3, "full", 100, 0, 0.40, 0.30), _row(0.3, "full", 100, 1, 0.44, 0.34)]
    (cell,) = summarise(rows, full_steps=100)
    assert cell["budget"] == 1.0 and cell["seeds"] == 2
    assert cell["knn_top1"] == pytest.approx(0.42) and cell["knn_top1_spread"] == pytest.approx(0.02)


def test_verdicts_name_the_first_level_where_short_dynamic_matches_the_full_pool() -> None:
    rows = []
    for r, short_cb in ((0.3, 0.30), (0.6, 0.397), (0.9, 0.45)):  # 0.6: within the seed noise of 0.40
        for seed, d in ((0, -0.002), (1, 0.002)):
            rows += [_row(r, "full", 100, seed, 0.40 + d, 0.30), _row(r, "cluster_balance", 60, seed, short_cb + d, 0.2),
                     _row(r, "loss_based", 60, seed, 0.20 + d, 0.2), _row(r, "static", 100, seed, 0.30 + d, 0.2),
                     _row(r, "cluster_balance", 100, seed, 0.35 + d, 0.2)]
    v = verdicts(summarise(rows, full_steps=100))
    assert v["cluster_balance@0.6x matches full@1x on knn_top1 from redundancy"] == 0.6
    assert v["loss_based@0.6x matches full@1x on knn_top1 from redundancy"] is None
    assert v["dynamic beats static beyond the noise on knn_top1 at 1.0x"] == [
        "cluster_balance@0.3", "cluster_balance@0.6", "cluster_balance@0.9"]


def test_verdicts_say_whether_pruning_beats_the_full_pool_at_the_same_steps() -> None:
    rows = []
    for seed, d in ((0, -0.002), (1, 0.002)):
        rows += [_row(0.3, "full", 60, seed, 0.40 + d, 0.30), _row(0.3, "cluster_balance", 60, seed, 0.42 + d, 0.30),
                 _row(0.3, "loss_based", 60, seed, 0.403 + d, 0.30), _row(0.9, "full", 60, seed, 0.40 + d, 0.30),
                 _row(0.9, "random", 60, seed, 0.45 + d, 0.31)]
    v = verdicts(summarise(rows, full_steps=100))
    # 0.42 clears 0.40 by more than the pooled noise (2 x 0.0028); 0.403 does not
    assert v["pruning beats the full pool at the same steps beyond the noise on knn_top1 at 0.6x"] == [
        "cluster_balance@0.3", "random@0.9"]
    assert v["pruning beats the full pool at the same steps beyond the noise on knn_tail_top1 at 0.6x"] == [
        "random@0.9"]


def test_the_noise_is_pooled_over_cells_so_a_lucky_zero_spread_does_not_count() -> None:
    rows = [_row(0.3, "full", 100, 0, 0.40, 0.3), _row(0.3, "full", 100, 1, 0.42, 0.3),
            _row(0.3, "random", 100, 0, 0.425, 0.3), _row(0.3, "random", 100, 1, 0.425, 0.3)]
    summary = summarise(rows, full_steps=100)
    # seed variances 0.0002 and 0 pool to a run sd of 0.01: twice the sd of a difference of two-seed means
    assert noise_threshold(summary, "knn_top1") == pytest.approx(0.02)
    v = verdicts(summary)
    # random is 0.015 above the full pool: beyond both cells' half-ranges (0.01 + 0.00), not beyond the pooled noise
    assert v["pruning beats the full pool at the same steps beyond the noise on knn_top1 at 1.0x"] == []
