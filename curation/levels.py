"""How many clusters each level of a hierarchical k-means gets, given the points it clusters.

One rule, two settings: curation (Vo et al. 2024: about 25 points per finest cluster, up to 4
levels at 10^8 points) and the dynamic pruning rounds, which rebuild their tree every few epochs
on a subset of the pool and keep it smaller. Levels a user sets are kept, only clamped so no level
asks for more clusters than half the points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class LevelRule:
    """Finest level: ``n // points_per_cluster`` clusters (at least 2, at most ``max_clusters``);
    each coarser level has a tenth of the one below while that one has >= 20, up to ``max_depth``."""

    points_per_cluster: int
    max_clusters: int
    max_depth: int

    def levels(self, n: int, given: Sequence[int] = ()) -> list[int]:
        """Clusters per level, finest first, for ``n`` points; ``given`` (the config's) wins when set."""
        if given:
            return [max(1, min(int(k), n // 2)) for k in given]
        out = [max(2, min(self.max_clusters, n // self.points_per_cluster))]
        while out[-1] >= 20 and len(out) < self.max_depth:
            out.append(out[-1] // 10)
        return out


#: the curation job's balancing (``curate.balance_levels`` empty)
CURATION_LEVELS = LevelRule(points_per_cluster=25, max_clusters=20000, max_depth=4)
#: a dynamic pruning round (``dynamic.levels`` empty)
PRUNING_LEVELS = LevelRule(points_per_cluster=20, max_clusters=1000, max_depth=3)
