"""The one error type of a bad config, and the checks every section's ``validate`` makes with it.

Kept apart from the sections (pipelines/config_schema.py and its neighbours) and the loader
(pipelines/config.py) so both can use them without importing each other.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config problem, phrased for the user: which key, what is allowed."""


def check(ok: bool, key: str, allowed: str) -> None:
    """Raise a ConfigError naming ``key`` (dotted) and what it ``must be`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key '{key.lstrip('.')}': must be {allowed}")


def check_levels(levels: list[int], key: str) -> None:
    """Clusters per level of a hierarchical k-means: positive, finest level first."""
    check(all(k >= 1 for k in levels) and levels == sorted(levels, reverse=True), key,
          "positive cluster counts, finest level first (non-increasing)")
