"""Score a curation manifest against planted truth (see ``curation.planting``).

A planted copy and its original form a group; curation is right about a group when the
group keeps exactly one member, whichever sorts first. So:
- recall of a kind = copies of that kind that were removed as a duplicate *of their own group*,
  or whose original was removed as a duplicate of them;
- precision = removals-as-duplicate whose ``duplicate_of`` is in the removed item's own group.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Iterable

DUP_REASONS = ("exact_dup", "near_dup", "semantic_dup")


def score_duplicates(rows: Iterable[dict[str, Any]], reasons: tuple[str, ...] = DUP_REASONS) -> dict[str, Any]:
    """Precision (over removals with one of ``reasons``) and recall per planted copy kind."""
    rows = list(rows)
    group: dict[str, str] = {}
    kind: dict[str, str] = {}
    for r in rows:
        meta = json.loads(r["meta"]) if r.get("meta") else {}
        if "of" in meta:
            group[r["key"]] = meta["of"]
            kind[r["key"]] = meta.get("planted", "")
    by_key = {r["key"]: r for r in rows}
    removed = [r for r in rows if r["reason"] in reasons]
    correct = sum(1 for r in removed if r["key"] in group and group.get(r["duplicate_of"]) == group[r["key"]])
    pointed_at: dict[str, list[str]] = defaultdict(list)  # key -> group members removed as its duplicate
    for r in removed:
        pointed_at[r["duplicate_of"]].append(r["key"])
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for key, g in group.items():
        k = kind[key]
        if k == "original":
            continue
        me = by_key[key]
        # the copy was caught if it was removed as a duplicate of its group, or a member of its group
        # was removed as a duplicate of it (it sorted first); a later stage may still remove the
        # survivor as a duplicate of a third member, and the group then keeps that one
        found = (me["reason"] in reasons and group.get(me["duplicate_of"]) == g) or any(
            group.get(other) == g for other in pointed_at.get(key, [])
        )
        orig = by_key[g]
        found = found or (orig["reason"] in reasons and group.get(orig["duplicate_of"]) == g and orig["duplicate_of"] == key)
        hits[k][0] += int(found)
        hits[k][1] += 1
    return {
        "precision": correct / len(removed) if removed else 1.0,
        "removed": len(removed),
        "recall": {k: h / n for k, (h, n) in sorted(hits.items())},
    }
