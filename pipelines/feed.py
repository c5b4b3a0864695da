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
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from curation.decode import Intensity, decode_image, open_image
from ssl_models.augment import ViewRecipe, crop_box_pixels, sample_crop_params

#: positions of a shard that share one crop-parameter generator in the Ray Data stage
CROP_CHUNK = 256
#: stream mode: bytes of crops per block the Ray Data stage hands on (a few per worker are in flight)
BLOCK_BYTES = 8 * 2**20
#: stream mode: part of the cluster's object store one worker's feed may fill with crops in flight
OBJECT_STORE_FRACTION = 0.4


# --------------------------------------------------------------------------- the pool and its plan


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
        counts = [kept_by_stem.get(PurePosixPath(str(s).split("://", 1)[-1]).stem) for s in shards]
        if any(c is None for c in counts):
            return cls.count(shards)  # shards that are not this manifest's output: read their headers
        return cls(tuple(str(s) for s in shards), tuple(int(c) for c in counts))

    @classmethod
    def count(cls, shards: Sequence[str]) -> "ShardPool":
        """Samples per shard from the tar headers / parquet footers, one Ray task per shard."""
        import ray.data

        from curation.ingest import expand_uris, storage_env

        uris = expand_uris(list(shards))
        ds = ray.data.from_items([{"i": i, "path": p} for i, p in enumerate(uris)], override_num_blocks=len(uris))
        rows = ds.map_batches(_count_shard, batch_size=1, fn_kwargs={"env": storage_env()}).take_all()
        counts = dict((int(r["i"]), int(r["n"])) for r in rows)
        return cls(tuple(uris), tuple(counts[i] for i in range(len(uris))))


def _count_shard(batch: dict[str, np.ndarray], env: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Ray Data UDF: the number of readable samples in one shard."""
    from curation.ingest import _apply_env, iter_samples

    _apply_env(env)
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


def plan_epoch(counts: Sequence[int], order: Sequence[int], world: int, per_worker: int) -> list[list[Segment]]:
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


# --------------------------------------------------------------------------- the Ray Data stage


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence: no correlated neighbouring seeds)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def chunk_crop_params(recipe: ViewRecipe, num_views: int, aspects: torch.Tensor, seed: int, epoch: int,
                      shard: int, chunk: int) -> list:
    """Crop boxes + flips of every view of one chunk of a shard's positions.

    The generator depends only on ``(seed, epoch, shard, chunk)`` and the draws do not depend on
    the aspects, so a sample's crops are the same whichever worker reads it and wherever its
    segment starts (a resumed epoch cuts the same crops as the uninterrupted one).
    """
    gen = torch.Generator().manual_seed(_mix(seed, epoch, shard, chunk, 0xC50))
    return [sample_crop_params(len(aspects), recipe, aspects, gen) for _ in range(num_views)]


def draft_for_boxes(boxes: list[tuple[float, float, float, float]], width: int, height: int, size: int) -> tuple[int, int]:
    """The smallest whole-image size a reduced (JPEG draft) decode may have so every box still holds
    ``size`` x ``size`` source pixels: the crop is never upsampled from a reduced decode."""
    need_w = max(size * width / max(b[2] - b[0], 1e-6) for b in boxes)
    need_h = max(size * height / max(b[3] - b[1], 1e-6) for b in boxes)
    return min(width, math.ceil(need_w)), min(height, math.ceil(need_h))


def render_crops(data: bytes, params: list, j: int, size: int, channels: int, max_pixels: int,
                 intensity: Intensity = "full_range") -> np.ndarray:
    """Decode one image (reduced where the crops allow) and cut its views: uint8 [V, size, size, C].
    ``intensity``: how a 16-bit/float image is scaled to 8 bits (``data.intensity``)."""
    from PIL import Image

    width, height = open_image(data, max_pixels).size
    boxes = [crop_box_pixels(p, j, width, height) for p in params]
    im = decode_image(data, channels, intensity=intensity, max_pixels=max_pixels,
                      draft_size=draft_for_boxes(boxes, width, height, size))
    sx, sy = im.size[0] / width, im.size[1] / height
    out = np.empty((len(params), size, size, channels), np.uint8)
    for v, (box, p) in enumerate(zip(boxes, params)):
        scaled = (max(0.0, box[0] * sx), max(0.0, box[1] * sy), min(im.size[0], box[2] * sx), min(im.size[1], box[3] * sy))
        view = im.resize((size, size), Image.BILINEAR, box=scaled)
        if bool(p.flip[j]):
            view = view.transpose(Image.FLIP_LEFT_RIGHT)
        arr = np.asarray(view, dtype=np.uint8)
        out[v] = arr[:, :, None] if channels == 1 else arr
    return out


def _empty_rows() -> dict[str, list]:
    return {"key": [], "label": [], "sample_id": [], "views": [], "error": [], "source": []}


def crop_segments(batch: dict[str, np.ndarray], recipe: ViewRecipe, num_views: int, channels: int, seed: int,
                  epoch: int, max_pixels: int, rows_per_block: int = 0, env: dict[str, str] | None = None,
                  intensity: Intensity = "full_range") -> Iterator[dict[str, np.ndarray]]:
    """Ray Data UDF (one segment per call): read positions ``[start, stop)`` of a shard, decode each
    image at its own size, cut ``num_views`` crops, yield blocks of fixed-size uint8 crops.

    A shard that cannot be opened or is cut short, and an image that no longer decodes, come out
    as rows with an ``error`` (and blank crops), so the worker counts them instead of crashing.
    With a keep-list (``keys``), positions count only the kept samples of the shard.
    """
    from curation.ingest import _apply_env, iter_samples

    _apply_env(env)
    uri, shard = str(batch["uri"][0]), int(batch["shard"][0])
    start, stop, first_id = int(batch["start"][0]), int(batch["stop"][0]), int(batch["first_id"][0])
    keep = batch["keys"][0] if "keys" in batch else None
    keep = set(keep) if keep is not None and len(keep) else None
    size = recipe.size
    if rows_per_block <= 0:  # blocks of about BLOCK_BYTES of crops
        rows_per_block = max(8, BLOCK_BYTES // (num_views * size * size * channels))
    rows = _empty_rows()
    pending: list[tuple[int, int, dict[str, Any]]] = []  # (position, member index, row) of the current chunk
    blank = np.zeros((num_views, size, size, channels), np.uint8)

    def error_row(key: str, reason: str, label: int = -1, sample_id: int = -1) -> None:
        for name, value in (("key", key), ("label", label), ("sample_id", sample_id), ("views", blank),
                            ("error", reason), ("source", uri)):
            rows[name].append(value)

    def flush_chunk() -> Iterator[dict[str, np.ndarray]]:
        if not pending:
            return
        chunk = pending[0][0] // CROP_CHUNK
        aspects = torch.ones(CROP_CHUNK)
        sizes: dict[int, tuple[int, int]] = {}
        for pos, _, row in pending:
            try:
                w, h = open_image(row["image"], max_pixels).size
                sizes[pos], aspects[pos % CROP_CHUNK] = (w, h), w / h
            except Exception:  # noqa: BLE001 - recorded as a row error below
                pass
        params = chunk_crop_params(recipe, num_views, aspects, seed, epoch, shard, chunk)
        for pos, member, row in pending:
            sample_id = first_id + member
            if pos not in sizes:
                error_row(row["key"], "decode_error", int(row["label"]), sample_id)
                continue
            try:
                views = render_crops(row["image"], params, pos % CROP_CHUNK, size, channels, max_pixels, intensity)
            except Exception:  # noqa: BLE001 - an image that decoded at curation but not now
                error_row(row["key"], "decode_error", int(row["label"]), sample_id)
                continue
            for name, value in (("key", row["key"]), ("label", int(row["label"])), ("sample_id", sample_id),
                                ("views", views), ("error", ""), ("source", uri)):
                rows[name].append(value)
            if len(rows["key"]) >= rows_per_block:
                yield emit()
        pending.clear()

    def emit() -> dict[str, np.ndarray]:
        out = {"key": np.array(rows["key"], dtype=object), "label": np.array(rows["label"], np.int64),
               "sample_id": np.array(rows["sample_id"], np.int64),
               "views": np.stack(rows["views"]) if rows["views"] else np.zeros((0, num_views, size, size, channels), np.uint8),
               "error": np.array(rows["error"], dtype=object), "source": np.array(rows["source"], dtype=object)}
        for v in rows.values():
            v.clear()
        return out

    pos = member = 0
    for row in iter_samples(uri):
        if row["read_error"]:
            # a curated shard holds only readable samples: this one broke (or went) after curation
            if row["read_error"] in ("unreadable_shard", "truncated_shard"):
                error_row(row["key"], row["read_error"])
            continue
        this_member = member
        member += 1
        if keep is not None and row["key"] not in keep:
            continue
        if pos >= stop:
            break
        if pos >= start:
            if pending and pos // CROP_CHUNK != pending[0][0] // CROP_CHUNK:
                yield from flush_chunk()
            pending.append((pos, this_member, row))
        pos += 1
    yield from flush_chunk()
    if rows["key"]:
        yield emit()


# --------------------------------------------------------------------------- the worker's side


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

        from curation.ingest import storage_env

        offsets = self.pool.offsets
        items = []
        for seg in segments:
            item = {"uri": self.pool.shards[seg.shard], "shard": seg.shard, "start": seg.start, "stop": seg.stop,
                    "first_id": int(offsets[seg.shard])}
            if self.keep is not None:
                item["keys"] = list(self.keep.get(seg.shard, ()))
            items.append(item)
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        ds = ds.map_batches(crop_segments, batch_size=1, fn_kwargs={
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
        window_index = windows_done
        buffer: list[dict[str, np.ndarray]] = []
        buffered = 0
        last_window: dict[str, np.ndarray] | None = None
        produced = 0
        emitted_batches = 0

        def take(arrays: list[dict[str, np.ndarray]], n: int) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
            joined = {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}
            head = {k: v[:n] for k, v in joined.items()}
            tail = {k: v[n:] for k, v in joined.items()}
            return head, ([tail] if len(tail["key"]) else [])

        def batches_of(window: dict[str, np.ndarray], index: int) -> Iterator[StreamBatch]:
            nonlocal emitted_batches, drop
            perm = self._window_rng(epoch, index).permutation(len(window["key"]))
            for b in range(0, len(perm), self.local_batch):
                rows = perm[b : b + self.local_batch]
                if drop > 0:
                    drop -= 1
                    continue
                if emitted_batches >= steps - skip_batches:
                    return
                emitted_batches += 1
                yield self._to_batch(window, rows)

        if segments:
            for block in self._dataset(segments, epoch).iter_batches(batch_size=None, batch_format="numpy",
                                                                      prefetch_batches=2):
                bad = np.array([bool(e) for e in block["error"]], dtype=bool)
                if bad.any():
                    self.counters.skipped_samples += int(sum(1 for e in block["error"][bad] if e == "decode_error"))
                    for e, src in zip(block["error"][bad], block["source"][bad]):
                        if e != "decode_error":
                            self.counters.skipped_shards.add(str(src))
                    block = {k: v[~bad] for k, v in block.items()}
                n = len(block["key"])
                if n == 0:
                    continue
                n = min(n, need - produced)
                if n <= 0:
                    break
                block = {k: v[:n] for k, v in block.items()}
                produced += n
                buffer.append(block)
                buffered += n
                while buffered >= self.window:
                    window, buffer = take(buffer, self.window)
                    buffered -= self.window
                    last_window = window
                    yield from batches_of(window, window_index)
                    window_index += 1
                if produced >= need:
                    break
        # the rest: a last, shorter window, then padding for samples that never came
        rest = take(buffer, buffered)[0] if buffered else None
        missing = need - produced
        if missing > 0:
            source = rest if rest is not None else last_window
            if source is None:
                raise RuntimeError(f"worker {self.rank} read no sample of its {len(segments)} segment(s) in epoch "
                                   f"{epoch + 1}: every shard it was given is missing or unreadable "
                                   f"({sorted(self.counters.skipped_shards)[:3]})")
            picks = self._window_rng(epoch, 0x7FFFFFFF).integers(0, len(source["key"]), missing)
            pad = {k: v[picks] for k, v in source.items()}
            rest = pad if rest is None else {k: np.concatenate([rest[k], pad[k]]) for k in rest}
            self.counters.padded += missing
        if rest is not None and len(rest["key"]):
            yield from batches_of(rest, window_index)

    def _to_batch(self, window: dict[str, np.ndarray], rows: np.ndarray) -> StreamBatch:
        views = torch.from_numpy(np.ascontiguousarray(window["views"][rows]))  # [B, V, S, S, C]
        keys = [str(k) for k in window["key"][rows]]
        ids = torch.from_numpy(window["sample_id"][rows].astype(np.int64))
        labels = torch.from_numpy(window["label"][rows].astype(np.int64))
        c = self.counters
        c.samples += len(rows)
        c.labels.update(int(l) for l in labels.tolist() if l >= 0)
        if self.record_keys:
            c.keys.extend(keys)
            c.ids.extend(ids.tolist())
        return StreamBatch(views.permute(1, 0, 4, 2, 3), ids, keys, labels)


# --------------------------------------------------------------------------- choosing the mode


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


def shard_keep_list(pool: ShardPool, keys: Sequence[str], shards: Sequence[int]) -> dict[int, list[str]]:
    """A keep-list (key + shard index per kept sample) as shard index -> kept keys."""
    out: dict[int, list[str]] = {i: [] for i in range(len(pool.shards))}
    for key, shard in zip(keys, shards):
        out[int(shard)].append(str(key))
    return out


def crc(key: str) -> int:
    """A stable 32-bit hash of a key (seeds per-sample draws in pruning rounds)."""
    return zlib.crc32(key.encode())
