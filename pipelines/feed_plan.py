"""The stream feed's plan: the pool of curated shards, the epoch's shard order and each worker's segments.

Pure functions of the pool's counts, the seed and the epoch (see ``pipelines.feed`` for why the
stream is planned this way), plus the choice between the memory and the stream feed. The read
tasks that follow the plan are ``pipelines.feed_crops``; the worker's side is ``pipelines.feed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class ShardPool:
    """The curated shards a run trains on and how many samples each holds (in order).

    Counts come from curation's manifest (``from_manifest``) or from reading the shards'
    headers (``count``); the step plan of both feed modes is made from them, before training.
    """

    shards: tuple[str, ...]
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.shards) != len(self.counts):
            raise ValueError(f"{len(self.shards)} shards but {len(self.counts)} counts")

    @property
    def total(self) -> int:
        return int(sum(self.counts))

    @property
    def offsets(self) -> np.ndarray:
        """Global sample id of each shard's first sample (ids are shard order x position)."""
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"shards": list(self.shards), "counts": [int(c) for c in self.counts]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ShardPool":
        return cls(tuple(data["shards"]), tuple(int(c) for c in data["counts"]))

    @classmethod
    def from_manifest(cls, manifest: str | Path, shards: Sequence[str]) -> "ShardPool":
        """Kept samples per curated shard, from the manifest (a curated shard is named after its input
        shard: ``NAME.tar`` holds the kept samples whose source is ``.../NAME.tar|.parquet``)."""
        import pyarrow.parquet as pq

        import storage

        fs, path = storage.filesystem_for(str(manifest))  # local or in object storage (run_dir may be a uri)
        table = pq.read_table(path, columns=["source", "kept"], filesystem=fs)
        kept_by_stem: dict[str, int] = {}
        for source, kept in zip(table.column("source").to_pylist(), table.column("kept").to_pylist()):
            if kept:
                stem = PurePosixPath(str(source).split("://", 1)[-1]).stem
                kept_by_stem[stem] = kept_by_stem.get(stem, 0) + 1
        stems = [PurePosixPath(str(s).split("://", 1)[-1]).stem for s in shards]
        if any(stem not in kept_by_stem for stem in stems):
            return cls.count(shards)  # shards that are not this manifest's output: read their headers
        return cls(tuple(str(s) for s in shards), tuple(kept_by_stem[stem] for stem in stems))

    @classmethod
    def count(cls, shards: Sequence[str]) -> "ShardPool":
        """Samples per shard from the tar headers / parquet footers, one Ray task per shard."""
        import ray.data

        from curation.ingest import expand_uris
        from storage.uri import storage_env

        uris = expand_uris(list(shards))
        ds = ray.data.from_items([{"i": i, "path": p} for i, p in enumerate(uris)], override_num_blocks=len(uris))
        rows = ds.map_batches(_count_shard, batch_size=1, fn_kwargs={"env": storage_env()}).take_all()
        counts = dict((int(r["i"]), int(r["n"])) for r in rows)
        return cls(tuple(uris), tuple(counts[i] for i in range(len(uris))))


def _count_shard(batch: dict[str, np.ndarray], env: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Ray Data UDF: the number of readable samples in one shard."""
    from curation.ingest import iter_samples
    from storage.uri import apply_env

    apply_env(env)
    uri = str(batch["path"][0])
    n = sum(1 for row in iter_samples(uri) if not row["read_error"])
    return {"i": np.array([int(batch["i"][0])]), "n": np.array([n])}


@dataclass(frozen=True)
class Segment:
    """Positions ``[start, stop)`` of shard ``shard`` (an index into the pool) in one worker's epoch."""

    shard: int
    start: int
    stop: int


def shard_order(seed: int, epoch: int, n_shards: int) -> np.ndarray:
    """The epoch's shard order: a permutation that depends only on the seed and the epoch."""
    return np.random.default_rng([int(seed), int(epoch), 0x5A2D]).permutation(n_shards)


def plan_epoch(counts: Sequence[int], order: Sequence[int] | np.ndarray, world: int, per_worker: int) -> list[list[Segment]]:
    """Split the epoch's sample sequence (shards in ``order``, each shard's samples in file order)
    into ``world`` contiguous parts of ``per_worker`` samples; the tail that is left is not read."""
    if per_worker * world > sum(counts):
        raise ValueError(f"{world} x {per_worker} samples planned from a pool of {sum(counts)}")
    plans: list[list[Segment]] = [[] for _ in range(world)]
    rank, need = 0, per_worker
    for shard in order:
        pos, n = 0, int(counts[shard])
        while pos < n and rank < world:
            take = min(need, n - pos)
            plans[rank].append(Segment(int(shard), pos, pos + take))
            pos, need = pos + take, need - take
            if need == 0:
                rank, need = rank + 1, per_worker
        if rank >= world:
            break
    return plans


def skip_samples(segments: list[Segment], skip: int) -> list[Segment]:
    """The segments that remain after the first ``skip`` samples of a worker's part."""
    out: list[Segment] = []
    for seg in segments:
        n = seg.stop - seg.start
        if skip >= n:
            skip -= n
            continue
        out.append(Segment(seg.shard, seg.start + skip, seg.stop))
        skip = 0
    return out


def decoded_bytes_per_sample(image_size: int, channels: int) -> int:
    """What one sample costs in the in-memory cache: a uint8 ``image_size`` square."""
    return image_size * image_size * channels


def choose_cache(mode: str, samples: int, image_size: int, channels: int, budget_gb: float) -> tuple[str, str]:
    """(``memory`` | ``stream``, why): ``auto`` keeps the pool in memory only when it fits the budget."""
    need = samples * decoded_bytes_per_sample(image_size, channels)
    sized = f"the decoded pool, {samples} x {image_size}x{image_size}x{channels} B = {need / 2**30:.3g} GiB,"
    if mode != "auto":
        return mode, f"data.cache={mode} as configured ({sized} not checked against a budget)"
    if need <= budget_gb * 2**30:
        return "memory", f"data.cache=auto chose memory: {sized} fits data.cache_budget_gb={budget_gb:g}"
    return "stream", f"data.cache=auto chose stream: {sized} does not fit data.cache_budget_gb={budget_gb:g}"


def shard_keep_list(pool: ShardPool, keys: Sequence[str] | np.ndarray,
                    shards: Sequence[int] | np.ndarray) -> dict[int, list[str]]:
    """A keep-list (key + shard index per kept sample) as shard index -> kept keys."""
    out: dict[int, list[str]] = {i: [] for i in range(len(pool.shards))}
    for key, shard in zip(keys, shards):
        out[int(shard)].append(str(key))
    return out
