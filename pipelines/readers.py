"""Ray Data readers of tar and parquet shards: one Ray task per shard, rows out in bounded chunks.

The tolerant per-shard readers and the listing live in ``curation.ingest`` (plain Python, no Ray);
this module turns them into Ray Data datasets for the jobs that use them (curation, the memory
feed, evaluation sets, pruning rounds). We read shards with our own readers inside a Ray Data
generator UDF instead of ``ray.data.read_webdataset``: a truncated shard, a link member or a
sample without an image must become a recorded row, not a failed job. Each shard is one task;
rows come out in chunks, so memory stays bounded by ``rows_per_batch`` per task whatever the
shard size. Ray workers may have been started before the driver set the storage credentials,
so every stage carries the driver's values to its tasks (``storage_env``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from curation.decode import Intensity
from curation.ingest import SAMPLE_COLUMNS, decode_batch, expand_uris, iter_samples
from storage.uri import apply_env, storage_env

if TYPE_CHECKING:
    import ray.data


def _rows_to_batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    batch = {c: np.array([r[c] for r in rows], dtype=object) for c in SAMPLE_COLUMNS}
    batch["label"] = batch["label"].astype(np.int64)
    return batch


def expand_shards(batch: dict[str, np.ndarray], rows_per_batch: int = 1024, image_column: str = "image",
                  env: dict[str, str] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data UDF: a batch of shard uris in, batches of sample rows out."""
    apply_env(env)
    for uri in batch["path"]:
        rows: list[dict[str, Any]] = []
        for row in iter_samples(str(uri), image_column):
            rows.append(row)
            if len(rows) >= rows_per_batch:
                yield _rows_to_batch(rows)
                rows = []
        if rows:
            yield _rows_to_batch(rows)


def _read(paths: str | Sequence[str], rows_per_batch: int, image_column: str) -> ray.data.Dataset:
    uris = expand_uris(paths)
    if not uris:
        raise ValueError("no shards to read")
    import ray.data  # here, not at module import: the CLI and config paths import this module without starting Ray Data

    ds = ray.data.from_items([{"path": p} for p in uris], override_num_blocks=len(uris))
    return ds.map_batches(expand_shards, batch_size=1,
                          fn_kwargs={"rows_per_batch": rows_per_batch, "image_column": image_column, "env": storage_env()})


def read_shards(paths: str | Sequence[str], rows_per_batch: int = 1024) -> ray.data.Dataset:
    """A Dataset of sample rows (``SAMPLE_COLUMNS``) from tar or parquet shards.

    ``paths``: uris, directories, globs or brace lists (``expand_uris``).
    """
    if not paths:
        raise ValueError("no shards to read")
    return _read(paths, rows_per_batch, "image")


def read_parquet_images(paths: str | Sequence[str], image_column: str = "image", rows_per_batch: int = 1024) -> ray.data.Dataset:
    """Parquet files with an encoded-image column -> the same row schema as ``read_shards``."""
    if not paths:
        raise ValueError("no parquet files to read")
    return _read(paths, rows_per_batch, image_column)


#: rows decoded at a time inside a read task: bounds the PIL/numpy working set of one task
DECODE_ROWS = 256


def map_shards(paths: str | Sequence[str], udf: Callable[..., dict[str, np.ndarray]],
               fn_kwargs: dict[str, Any] | None = None, rows_per_batch: int = DECODE_ROWS,
               image_column: str = "image") -> ray.data.Dataset:
    """``udf`` over every shard's sample rows, one Ray task per shard (read + ``udf`` on chunks of
    ``rows_per_batch`` rows), so shards are processed in parallel across the cluster and each
    task's output stays one small block. See ``read_decoded`` for why a plain
    ``read_shards(...).map_batches(udf, batch_size=B)`` must not be used: it fuses into tasks of
    B shards each (no parallelism below B shards, blocks up to 128 MiB)."""
    uris = expand_uris(paths)
    if not uris:
        raise ValueError("no shards to read")
    kwargs = dict(fn_kwargs or {})

    def per_shard(batch: dict[str, np.ndarray], env: dict[str, str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        for rows in expand_shards(batch, rows_per_batch, image_column, env):
            yield udf(rows, **kwargs)

    per_shard.__name__ = per_shard.__qualname__ = f"{udf.__name__}_per_shard"  # the Ray task/process title
    import ray.data

    ds = ray.data.from_items([{"path": p} for p in uris], override_num_blocks=len(uris))
    return ds.map_batches(per_shard, batch_size=1, fn_kwargs={"env": storage_env()})


def read_decoded(paths: str | Sequence[str], size: int, channels: int,
                 intensity: Intensity = "full_range") -> ray.data.Dataset:
    """Shards -> Dataset of {key, image uint8 [size,size,C], label}, the training feed.

    One Ray task per shard that reads *and* decodes (``map_shards``), so memory does not grow
    with the number of shards. Not ``read_shards(...).map_batches(decode_batch, batch_size=256)``:
    Ray Data fuses the two maps and gives the fused task ``batch_size`` rows of *its input*, i.e.
    256 shard paths per task; one task then decoded every shard of a run of <= 256 shards, its
    output was coalesced into blocks of up to ``DataContext.target_max_block_size`` (128 MiB)
    before anything reached the consumer, and those blocks filled (and spilled) the object store
    and the driver: peak memory grew with N up to that size (issue #3, ``bench/ingest.py``).
    Keep it so: a ``map_batches(..., batch_size=B)`` chained right after this one would fuse and
    bundle B shards per task again.
    """
    return map_shards(paths, decode_batch, {"size": size, "channels": channels, "intensity": intensity},
                      rows_per_batch=DECODE_ROWS)
