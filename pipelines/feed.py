"""The training feed: which samples each worker trains on, in which order, and how they reach it.

Two modes (``data.cache``):

- **memory**: the curated pool is decoded once, at ``data.image_size`` (short side resized,
  centre square kept), into the workers' memory through Ray Train's dataset shard; every epoch
  is a permutation of it and the views are cut and coloured batched on the worker
  (``ssl_models.augment.augment_batch``). Fast for small pools of small images.
- **stream**: nothing of the pool is held. Every epoch, each worker builds a Ray Data job over
  its part of the epoch's shard order: read tasks (any node, CPU) decode each image at its own
  size (a reduced JPEG decode when the crop allows it), cut the views' RandomResizedCrop boxes
  from the original width and height and flip them, and hand fixed-size uint8 crops to the
  worker; the worker permutes them within a window of batches and applies colour jitter,
  grayscale, blur and normalisation batched on its device (``colour_views``).

How the stream is made reproducible and resumable (the design choice, and why): the epoch's
shard order is a pure function of ``(seed, epoch)`` (``shard_order``), the whole epoch is one
sequence of samples over that order, and rank ``r`` trains on positions ``[r*P, (r+1)*P)`` with
``P = planned steps x local batch`` (``plan_epoch``). Each worker runs its own Ray Data job over
exactly its segments with ``preserve_order``, and crop parameters are drawn per chunk of a
shard's own positions from a generator seeded by ``(seed, epoch, shard, chunk)``. So every
worker gets exactly its planned number of samples (DDP stays in step; no worker runs out early),
every sample of the epoch's order is read by exactly one worker, and a resumed run can skip
exactly what was trained. Ray Train's ``get_dataset_shard`` was not used for this: its
``streaming_split`` hands blocks to whichever worker asks first (which worker sees which sample
is not reproducible, so an epoch cannot be continued at a step), it equalises counts by dropping
rows, and ``randomize_block_order`` / ``FileShuffleConfig`` reseed per *execution* of the dataset
(``DataContext._execution_idx``, which a worker restart resets and an epoch that breaks off after
its planned steps does not advance), not per epoch.

The local shuffle is ours, not ``iter_batches(local_shuffle_buffer_size=...)``: the worker collects
``data.shuffle_window_batches`` batches of crops, permutes them with a generator seeded by
``(seed, epoch, rank, window)`` and trains on them. A window is a pure function of the plan, so a
resumed epoch skips whole windows without reading them; Ray's sliding buffer has no such state to
restore.

What an epoch drops: the planned steps use ``N // global_batch`` batches, so the last
``N mod global_batch`` positions of the epoch's order (fewer than one global batch) are not read
that epoch; the order changes every epoch, so a different handful is left out each time.

Three modules, one job each: ``pipelines.feed_plan`` (the pool, the epoch's order, each worker's
segments, the memory-or-stream choice), ``pipelines.feed_crops`` (the read tasks that cut the
crops) and this one (the worker's side: its Ray Data job, windows, batches and counters).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from curation.decode import Intensity
# the plan and the read tasks have modules of their own; their names stay importable from here
from pipelines.feed_crops import chunk_crop_params, crop_segments, render_crops
from pipelines.feed_plan import (Segment, ShardPool, choose_cache, decoded_bytes_per_sample, plan_epoch, shard_keep_list,
                                 shard_order, skip_samples)
from ssl_models.augment import ViewRecipe

__all__ = ["EpochCounters", "StreamBatch", "StreamFeed", "Segment", "ShardPool", "choose_cache", "decoded_bytes_per_sample",
           "plan_epoch", "shard_keep_list", "shard_order", "skip_samples", "chunk_crop_params", "crop_segments", "render_crops"]

#: stream mode: part of the cluster's object store one worker's feed may fill with crops in flight
OBJECT_STORE_FRACTION = 0.4


@dataclass
class EpochCounters:
    """What one worker's epoch read: counted, so a bad shard is visible in the epoch's metrics."""

    samples: int = 0  # rows handed to training (repeats that padded the planned batches included)
    padded: int = 0  # repeats that filled the planned batches because samples were missing
    skipped_samples: int = 0  # rows that came back with an error (undecodable, shard cut short)
    skipped_shards: set[str] = field(default_factory=set)
    labels: set[int] = field(default_factory=set)
    keys: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)


@dataclass
class StreamBatch:
    """One worker batch from the stream: uint8 crops [V, B, C, S, S] + ids, keys, labels."""

    crops: torch.Tensor
    ids: torch.Tensor
    keys: list[str]
    labels: torch.Tensor


class StreamFeed:
    """One worker's stream over the epochs (see the module docstring for the plan it follows)."""

    def __init__(self, pool: ShardPool, recipe: ViewRecipe, *, channels: int, num_views: int, local_batch: int,
                 window_batches: int, seed: int, rank: int, world: int, max_pixels: int,
                 intensity: Intensity = "full_range", record_keys: bool = False) -> None:
        self.pool, self.recipe, self.channels, self.num_views = pool, recipe, channels, num_views
        self.local_batch, self.window = local_batch, window_batches * local_batch
        self.seed, self.rank, self.world, self.max_pixels = seed, rank, world, max_pixels
        self.intensity = intensity
        self.record_keys = record_keys
        # one Ray Data job per worker and epoch: its start/finish lines would be most of the worker's log
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        self.keep: dict[int, list[str]] | None = None  # shard index -> kept keys (a pruning round's keep-list)
        self.counters = EpochCounters()

    # the pool this epoch draws from
    def set_keep(self, keep: dict[int, list[str]] | None) -> None:
        self.keep = keep

    def counts(self) -> list[int]:
        if self.keep is None:
            return list(self.pool.counts)
        return [len(self.keep.get(i, ())) for i in range(len(self.pool.shards))]

    @property
    def active_samples(self) -> int:
        return int(sum(self.counts()))

    def segments(self, epoch: int, steps: int) -> list[Segment]:
        counts = self.counts()
        order = shard_order(self.seed, epoch, len(counts))
        return plan_epoch(counts, order, self.world, steps * self.local_batch)[self.rank]

    def _dataset(self, segments: list[Segment], epoch: int):
        import ray
        import ray.data
        from ray.data import ExecutionResources

        from storage.uri import storage_env

        offsets = self.pool.offsets
        items = []
        for seg in segments:
            item = {"uri": self.pool.shards[seg.shard], "shard": seg.shard, "start": seg.start, "stop": seg.stop,
                    "first_id": int(offsets[seg.shard])}
            if self.keep is not None:
                item["keys"] = list(self.keep.get(seg.shard, ()))
            items.append(item)
        ds: ray.data.Dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        # Ray's stubs type a UDF as taking the batch alone; the rest of crop_segments' arguments come as fn_kwargs
        ds = ds.map_batches(crop_segments, batch_size=1, fn_kwargs={  # type: ignore[arg-type]
            "recipe": self.recipe, "num_views": self.num_views, "channels": self.channels, "seed": self.seed,
            "epoch": epoch, "max_pixels": self.max_pixels, "env": storage_env(), "intensity": self.intensity})
        options = ds.context.execution_options
        options.preserve_order = True  # the worker's sample order is the plan's: reproducible, resumable
        store = ray.cluster_resources().get("object_store_memory", 0)
        if store:
            options.resource_limits = ExecutionResources(
                object_store_memory=int(store * OBJECT_STORE_FRACTION / max(1, self.world)))
        return ds

    def _window_rng(self, epoch: int, window: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, self.rank, window, 0x51F])

    def epoch_batches(self, epoch: int, steps: int, skip_batches: int = 0) -> Iterator[StreamBatch]:
        """Exactly ``steps - skip_batches`` batches of this worker's part of the epoch.

        ``skip_batches`` (a resumed epoch): whole windows already trained on are not read again;
        in the window that was interrupted, its first batches are read and dropped, so the batches
        that follow are those the uninterrupted run would have trained on.
        """
        self.counters = EpochCounters()
        windows_done = skip_batches * self.local_batch // self.window
        drop = skip_batches - windows_done * self.window // self.local_batch
        segments = skip_samples(self.segments(epoch, steps), windows_done * self.window)
        need = (steps - skip_batches) * self.local_batch + drop * self.local_batch
        cursor = _BatchCursor(drop=drop, left=steps - skip_batches)
        window_index = windows_done
        read = _WindowReader()
        if segments:
            for window in self._full_windows(segments, epoch, need, read):
                yield from self._batches_of(window, epoch, window_index, cursor)
                window_index += 1
        rest = self._last_window(read, need, epoch, len(segments))
        if rest is not None and len(rest["key"]):
            yield from self._batches_of(rest, epoch, window_index, cursor)

    def _full_windows(self, segments: list[Segment], epoch: int, need: int,
                      read: _WindowReader) -> Iterator[dict[str, np.ndarray]]:
        """Every full window of the first ``need`` good samples read; what is left stays in ``read``.

        Rows with an error are counted (``self.counters``) and left out as they arrive, so a bad
        image or shard costs its samples, never the epoch."""
        for block in self._dataset(segments, epoch).iter_batches(batch_size=None, batch_format="numpy",
                                                                  prefetch_batches=2):
            block = self._drop_error_rows(block)
            n = len(block["key"])
            if n == 0:
                continue
            n = min(n, need - read.produced)
            if n <= 0:
                break
            block = {k: v[:n] for k, v in block.items()}
            read.produced += n
            read.buffer.append(block)
            read.buffered += n
            while read.buffered >= self.window:
                window, read.buffer = _take_rows(read.buffer, self.window)
                read.buffered -= self.window
                read.last_window = window
                yield window
            if read.produced >= need:
                break

    def _drop_error_rows(self, block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The block without its error rows, counted: an image that no longer decodes as a skipped
        sample, any other error as the shard it came from (missing or cut short)."""
        bad = np.array([bool(e) for e in block["error"]], dtype=bool)
        if not bad.any():
            return block
        self.counters.skipped_samples += int(sum(1 for e in block["error"][bad] if e == "decode_error"))
        for e, src in zip(block["error"][bad], block["source"][bad]):
            if e != "decode_error":
                self.counters.skipped_shards.add(str(src))
        return {k: v[~bad] for k, v in block.items()}

    def _last_window(self, read: _WindowReader, need: int, epoch: int, segments: int) -> dict[str, np.ndarray] | None:
        """The rest: a last, shorter window, then padding for samples that never came.

        Padding repeats random samples of what was read, so every worker trains the same number of
        steps (DDP needs it) even where shards went missing; the count goes in ``counters.padded``."""
        rest = _take_rows(read.buffer, read.buffered)[0] if read.buffered else None
        missing = need - read.produced
        if missing > 0:
            source = rest if rest is not None else read.last_window
            if source is None:
                raise RuntimeError(f"worker {self.rank} read no sample of its {segments} segment(s) in epoch "
                                   f"{epoch + 1}: every shard it was given is missing or unreadable "
                                   f"({sorted(self.counters.skipped_shards)[:3]})")
            picks = self._window_rng(epoch, 0x7FFFFFFF).integers(0, len(source["key"]), missing)
            pad = {k: v[picks] for k, v in source.items()}
            rest = pad if rest is None else {k: np.concatenate([rest[k], pad[k]]) for k in rest}
            self.counters.padded += missing
        return rest

    def _batches_of(self, window: dict[str, np.ndarray], epoch: int, index: int,
                    cursor: _BatchCursor) -> Iterator[StreamBatch]:
        """A window's batches in its own shuffled order (seeded per window, so a resume sees the same),
        after dropping those a resumed epoch already trained on, up to the epoch's batch count."""
        perm = self._window_rng(epoch, index).permutation(len(window["key"]))
        for b in range(0, len(perm), self.local_batch):
            rows = perm[b : b + self.local_batch]
            if cursor.drop > 0:
                cursor.drop -= 1
                continue
            if cursor.left <= 0:
                return
            cursor.left -= 1
            yield self._to_batch(window, rows)

    def _to_batch(self, window: dict[str, np.ndarray], rows: np.ndarray) -> StreamBatch:
        views = torch.from_numpy(np.ascontiguousarray(window["views"][rows]))  # [B, V, S, S, C]
        keys = [str(k) for k in window["key"][rows]]
        ids = torch.from_numpy(window["sample_id"][rows].astype(np.int64))
        labels = torch.from_numpy(window["label"][rows].astype(np.int64))
        c = self.counters
        c.samples += len(rows)
        c.labels.update(int(label) for label in labels.tolist() if label >= 0)
        if self.record_keys:
            c.keys.extend(keys)
            c.ids.extend(ids.tolist())
        return StreamBatch(views.permute(1, 0, 4, 2, 3), ids, keys, labels)


@dataclass
class _BatchCursor:
    """Where an epoch's batches stand: how many read batches are still to drop (a resumed epoch) and
    how many are still to hand out."""

    drop: int
    left: int


@dataclass
class _WindowReader:
    """What an epoch has read but not yet handed out as a full window (and the last full window, to
    pad from when the rest is empty)."""

    buffer: list[dict[str, np.ndarray]] = field(default_factory=list)
    buffered: int = 0
    produced: int = 0
    last_window: dict[str, np.ndarray] | None = None


def _take_rows(arrays: list[dict[str, np.ndarray]], n: int) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    """The first ``n`` rows of the blocks joined into one, and the rest (as a list of at most one block)."""
    joined = {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}
    head = {k: v[:n] for k, v in joined.items()}
    tail = {k: v[n:] for k, v in joined.items()}
    return head, ([tail] if len(tail["key"]) else [])
