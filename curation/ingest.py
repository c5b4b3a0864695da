"""Ray Data stages that stream samples out of tar shards.

We read shards with our own tolerant reader (``curation.shards``) inside a Ray
Data generator UDF instead of ``ray.data.read_webdataset``: a truncated shard,
a link member or a sample without an image must become a recorded row, not a
failed job. Each shard is one task; rows come out in chunks, so memory stays
bounded by ``rows_per_batch`` per task whatever the shard size.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pyarrow.fs as pafs
import ray.data

from curation.shards import iter_tar_samples
from curation.validate import decode_to_array

SAMPLE_COLUMNS = ("key", "image", "ext", "label", "meta", "source", "read_error")


def open_input(uri: str):
    """Open a local path or any pyarrow filesystem uri (s3://, gs://, file://) for streaming reads."""
    filesystem, path = pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)
    return filesystem.open_input_stream(path)


def _rows_to_batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    batch = {c: np.array([r[c] for r in rows], dtype=object) for c in SAMPLE_COLUMNS}
    batch["label"] = batch["label"].astype(np.int64)
    return batch


def expand_shards(batch: dict[str, np.ndarray], rows_per_batch: int = 1024) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data UDF: a batch of shard paths in, batches of sample rows out."""
    for uri in batch["path"]:
        rows: list[dict[str, Any]] = []
        with open_input(str(uri)) as stream:
            for row in iter_tar_samples(stream, str(uri)):
                rows.append(row)
                if len(rows) >= rows_per_batch:
                    yield _rows_to_batch(rows)
                    rows = []
        if rows:
            yield _rows_to_batch(rows)


def read_shards(paths: list[str], rows_per_batch: int = 1024) -> ray.data.Dataset:
    """A Dataset of sample rows (``SAMPLE_COLUMNS``) from tar shard paths or uris."""
    if not paths:
        raise ValueError("no shards to read")
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=len(paths))
    return ds.map_batches(expand_shards, batch_size=1, fn_kwargs={"rows_per_batch": rows_per_batch})


def decode_batch(batch: dict[str, np.ndarray], size: int, channels: int) -> dict[str, np.ndarray]:
    """Ray Data UDF: encoded bytes -> uint8 [N, size, size, C] pixels (rows that fail are dropped
    here only because curation already recorded them; training reads curated shards)."""
    images, labels, keys = [], [], []
    for key, data, label in zip(batch["key"], batch["image"], batch["label"]):
        if data is None:
            continue
        try:
            images.append(decode_to_array(data, size, channels))
        except Exception:  # noqa: BLE001 - recorded by curation; defensive for un-curated input
            continue
        labels.append(int(label))
        keys.append(key)
    if not images:
        return {"key": np.array([], dtype=object), "image": np.zeros((0, size, size, channels), np.uint8),
                "label": np.zeros(0, np.int64)}
    return {"key": np.array(keys, dtype=object), "image": np.stack(images), "label": np.array(labels, np.int64)}


def read_decoded(paths: list[str], size: int, channels: int) -> ray.data.Dataset:
    """Shards -> Dataset of {key, image uint8 [size,size,C], label}, the training feed."""
    return read_shards(paths).map_batches(decode_batch, batch_size=256, fn_kwargs={"size": size, "channels": channels})
