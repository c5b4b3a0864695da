"""The manifest: one row per input sample, with its fate and the reason.

Invariant (checked, not hoped for): every input key appears exactly once and
kept + removed = input. ``check_conservation`` raises if a stage lost or
duplicated a sample, so a bug shows up as a failed job instead of a quietly
smaller data set.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

import storage

MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("label", pa.int64()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("pixel_sha256", pa.string()),
        ("phash", pa.uint64()),
        ("kept", pa.bool_()),
        ("reason", pa.string()),
        ("duplicate_of", pa.string()),
        ("cluster_ids", pa.list_(pa.int64())),  # hierarchical k-means cluster per level, finest first
        ("meta", pa.string()),
    ]
)


class ConservationError(RuntimeError):
    """A curation stage lost or duplicated samples."""


def check_conservation(input_keys: Iterable[str], manifest: pa.Table) -> None:
    """Raise unless the manifest holds every input key exactly once."""
    wanted = Counter(input_keys)
    got = Counter(manifest.column("key").to_pylist())
    twice = [k for k, c in got.items() if c > 1]
    missing = [k for k in wanted if k not in got]
    extra = [k for k in got if k not in wanted]
    if twice or missing or extra:
        raise ConservationError(
            f"manifest does not match the input: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(extra)} unexpected (e.g. {extra[:3]}), {len(twice)} repeated (e.g. {twice[:3]})"
        )
    kept = int(pa.compute.sum(manifest.column("kept")).as_py() or 0)
    if kept + (manifest.num_rows - kept) != sum(wanted.values()):
        raise ConservationError("kept + removed != input")


def write_table_atomic(table: pa.Table, path: str | Path) -> Path | str:
    """Write parquet whole or not at all (``storage.open_output``: temp + rename locally, one upload to a
    bucket), so a killed job never leaves half a file; ``path`` may be a uri."""
    with storage.open_output(path) as f:
        pq.write_table(table, f)
    return str(path) if storage.is_uri(path) else Path(path)


def reason_counts(manifest: pa.Table) -> dict[str, int]:
    """How many samples ended with each reason (``ok`` = kept)."""
    counts = Counter(r.split(":", 1)[0] for r in manifest.column("reason").to_pylist())
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
