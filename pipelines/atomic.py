"""Atomic file writes, kept for existing callers: the storage layer (``storage.write_*``) does the work,
so the path may also be an object-store uri. New code should call ``storage`` directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import storage


def _as_given(location: str) -> Path | str:
    """A local path back as ``Path`` (what these helpers always returned), a uri as ``str``."""
    return location if storage.is_uri(location) else Path(location)


def write_bytes_atomic(data: bytes, path: str | Path) -> Path | str:
    return _as_given(storage.write_bytes(path, data))


def write_text_atomic(text: str, path: str | Path) -> Path | str:
    return _as_given(storage.write_text(path, text))


def write_json_atomic(obj: Any, path: str | Path) -> Path | str:
    return _as_given(storage.write_json(path, obj))
