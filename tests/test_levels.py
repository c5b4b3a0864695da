"""The one rule for clusters per k-means level (curation and the pruning rounds use it with their settings)."""

from __future__ import annotations

from curation.levels import CURATION_LEVELS, PRUNING_LEVELS


def test_curation_levels_follow_vo_et_al() -> None:
    """~25 points per finest cluster, /10 per level while a level keeps >= 20, at most 4 levels."""
    assert CURATION_LEVELS.levels(100_000) == [4000, 400, 40, 4]
    assert CURATION_LEVELS.levels(10**9) == [20000, 2000, 200, 20]  # finest capped; 4 levels at most
    assert CURATION_LEVELS.levels(10) == [2]


def test_pruning_rounds_keep_a_smaller_tree() -> None:
    assert PRUNING_LEVELS.levels(20_000) == [1000, 100, 10]
    assert PRUNING_LEVELS.levels(10**7) == [1000, 100, 10]
    assert PRUNING_LEVELS.levels(3) == [2]


def test_configured_levels_win_but_never_exceed_half_the_points() -> None:
    for rule in (CURATION_LEVELS, PRUNING_LEVELS):
        assert rule.levels(1000, [300, 30]) == [300, 30]
        assert rule.levels(100, [300, 30]) == [50, 30]
        assert rule.levels(1, [4]) == [1]
