"""A Train worker's data, one interface over the two feeds, so the loop in pipelines/train_loop.py has
no ``if stream`` of its own.

``MemoryData``: this worker's part of the pool, decoded once from Ray Train's dataset shard; views are
rendered from it on the worker and dynamic pruning keeps a subset of local indices. ``StreamData``:
pipelines/feed.py's ``StreamFeed`` (each epoch a Ray Data job over this worker's part of the shard
order; crops cut in Ray Data, colour on the worker); pruning is a keep-list that rank 0 computes over the
whole pool and broadcasts. Both plan ``pool samples // global batch`` steps per epoch, every worker exactly
that many batches.

The generator order is part of the behaviour (a resumed run draws the same views): ``plan_epoch`` draws
the memory feed's sample order from the epoch-seeded generator *before* a resumed epoch restores the
generator's state, and ``batches`` pads with it *after*.
"""

from __future__ import annotations

from typing import Any, Iterable

import ray.train
import torch

import storage
from pipelines.config import PipelineConfig
from pipelines.console import say
from pipelines.dynamic import PruningRound, load_keep_list, select_subset, stream_round
from pipelines.feed import ShardPool, StreamFeed, shard_order
from pipelines.ranks import broadcast_from_rank0, sum_over_ranks
from pipelines.train_model import eager_only
from ssl_models.augment import RENDERERS, ViewRecipe, colour_views


def load_local_shard(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pull this worker's whole shard into memory once (uint8 NCHW + labels).

    For pools that fit in worker memory this turns every later epoch into pure
    tensor indexing; the shard is a disjoint, equal-sized split per worker.
    """
    shard = ray.train.get_dataset_shard("train")
    images, labels = [], []
    for batch in shard.iter_torch_batches(batch_size=max(256, batch_size), dtypes={"image": torch.uint8, "label": torch.int64}):
        images.append(batch["image"].permute(0, 3, 1, 2).contiguous())
        labels.append(batch["label"])
    if not images:
        raise RuntimeError("this worker's data shard is empty: fewer samples than workers?")
    return torch.cat(images), torch.cat(labels)


def pruning_due(cfg: PipelineConfig, epoch: int) -> bool:
    """Whether a dynamic-pruning round starts epoch ``epoch`` (0-based: epochs finished)."""
    dyn = cfg.dynamic
    return dyn.policy != "none" and epoch >= dyn.warmup_epochs and (epoch - dyn.warmup_epochs) % dyn.every_epochs == 0


def write_seen(run_dir: str | None, epoch: int, rank: int, ids: list[int], keys: list[str] | None) -> None:
    """``train.record_seen_keys``: what this worker trained on in ``epoch`` (1-based), in order."""
    if run_dir is None:
        return
    import pyarrow as pa

    from curation.manifest import write_table_atomic

    columns: dict[str, Any] = {"sample_id": pa.array(ids, pa.int64())}
    if keys is not None:
        columns["key"] = pa.array(keys, pa.string())
    write_table_atomic(pa.table(columns), storage.join(run_dir, "seen_keys", f"epoch_{epoch:06d}_rank_{rank}.parquet"))


class MemoryData:
    """The memory feed: this worker's images and labels, the indices pruning keeps, the epoch's order."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, cfg: PipelineConfig, recipe: ViewRecipe, *,
                 rank: int, local_batch: int, device: torch.device) -> None:
        self.images, self.labels, self.cfg, self.recipe = images, labels, cfg, recipe
        self.rank, self.local_batch, self.device = rank, local_batch, device
        self.render_view = RENDERERS[cfg.augment.renderer]
        self.active = torch.arange(len(images))
        self.order = self.active
        self.padded = 0
        self.seen_ids: list[int] = []
        self.keep_path: str | None = None  # the stream feed's keep-list; carried through a memory run's checkpoints

    def restore_keep(self, keep_path: str | None) -> None:
        self.keep_path = keep_path

    def _round(self, backbone: torch.nn.Module, epoch: int) -> PruningRound:
        """A dynamic-pruning round on this worker's pool; the seed depends on the epoch, so a resumed
        run re-selects the same way from the restored model."""
        dyn = self.cfg.dynamic
        with eager_only():
            return select_subset(dyn.policy, backbone, self.images, self.labels, self.recipe,
                                 keep_fraction=dyn.keep_fraction, subset_for_clustering=dyn.subset_for_clustering,
                                 levels=list(dyn.levels), resampling_steps=dyn.resampling_steps,
                                 seed=self.cfg.seed * 7919 + epoch * 31 + self.rank)

    def reselect(self, backbone: torch.nn.Module, start_epoch: int) -> None:
        """On resume: the keep-set of the last round before ``start_epoch``, selected again."""
        dyn = self.cfg.dynamic
        if dyn.policy != "none" and start_epoch > dyn.warmup_epochs:
            last_round = dyn.warmup_epochs + (start_epoch - dyn.warmup_epochs) // dyn.every_epochs * dyn.every_epochs
            self.active = self._round(backbone, last_round).indices

    def prune(self, backbone: torch.nn.Module, epoch: int) -> dict[str, Any]:
        pruned = self._round(backbone, epoch)
        self.active = pruned.indices
        return pruned.info

    def plan_epoch(self, epoch: int, gen: torch.Generator, steps_per_epoch: int, resuming: bool,
                   recorded_order: list[int] | None) -> tuple[int, int, list[int] | None]:
        """(samples the epoch draws from on all ranks, batches planned, shard order: none in memory)."""
        self.order = self.active[torch.randperm(len(self.active), generator=gen)]
        active_samples = int(sum_over_ranks([len(self.active)], self.device)[0])  # every rank's own kept count
        plan = steps_per_epoch if len(self.active) == len(self.images) else active_samples // self.cfg.train.batch_size
        return active_samples, plan, None

    def batches(self, epoch: int, epoch_steps: int, skip_batches: int, gen: torch.Generator) -> Iterable[Any]:
        need = epoch_steps * self.local_batch
        self.padded, self.seen_ids = 0, []
        if len(self.order) < need:  # fewer decoded samples than planned (a decode failure): repeat, counted
            self.padded = need - len(self.order)
            self.order = torch.cat([self.order, self.order[torch.randint(len(self.order), (self.padded,), generator=gen)]])
        return range(skip_batches, epoch_steps)

    def pixels_and_ids(self, i: int, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``i``'s uint8 images on the device and their global sample ids (rank * pool + index)."""
        idx = self.order[i * self.local_batch: (i + 1) * self.local_batch]
        ids = idx + self.rank * len(self.images)
        if self.cfg.train.record_seen_keys:
            self.seen_ids.extend(ids.tolist())
        return self.images[idx].to(self.device, non_blocking=True), ids

    def views(self, pixels: torch.Tensor, lo: int, hi: int, gen: torch.Generator, num_views: int) -> list[torch.Tensor]:
        return [self.render_view(pixels[lo:hi], self.recipe, gen) for _ in range(num_views)]

    def epoch_counts(self, trained: int) -> list[float]:
        """This rank's (samples trained, repeats, skipped samples, skipped shards) of the epoch."""
        return [trained * self.local_batch - self.padded, self.padded, 0, 0]

    def seen(self) -> tuple[list[int], list[str] | None]:
        return self.seen_ids, None

    def pool_classes(self) -> int:
        return int(torch.unique(self.labels[self.labels >= 0]).numel())


class StreamData:
    """The stream feed: ``StreamFeed`` over the shared pool, with rank 0's keep-list in force."""

    def __init__(self, feed: StreamFeed, pool: ShardPool, cfg: PipelineConfig, *, rank: int, run_dir: str | None,
                 device: torch.device) -> None:
        self.feed, self.pool, self.cfg, self.rank, self.run_dir, self.device = feed, pool, cfg, rank, run_dir, device
        self.keep_path: str | None = None

    def restore_keep(self, keep_path: str | None) -> None:
        """On resume: the keep-list in force at the checkpoint (rank 0 reads it, every rank gets it)."""
        self.keep_path = keep_path
        if keep_path:
            assert self.run_dir is not None  # a keep-list was written under it
            keep = load_keep_list(self.pool, storage.join(self.run_dir, keep_path)) if self.rank == 0 else None
            self.feed.set_keep(broadcast_from_rank0(keep))

    def reselect(self, backbone: torch.nn.Module, start_epoch: int) -> None:
        """Nothing to select again: the keep-list came back with the checkpoint (``restore_keep``)."""

    def prune(self, backbone: torch.nn.Module, epoch: int) -> dict[str, Any]:
        keep, round_info, keep_path = None, {}, None
        if self.rank == 0:
            pruned = stream_round(self.cfg, backbone, self.pool, epoch=epoch, run_dir=self.run_dir)
            keep, round_info, keep_path = pruned.keep, pruned.info, pruned.path
        keep, round_info, self.keep_path = broadcast_from_rank0((keep, round_info, keep_path))
        self.feed.set_keep(keep)
        return round_info

    def plan_epoch(self, epoch: int, gen: torch.Generator, steps_per_epoch: int, resuming: bool,
                   recorded_order: list[int] | None) -> tuple[int, int, list[int] | None]:
        """(samples the epoch draws from, batches planned, the epoch's shard order)."""
        active_samples = self.feed.active_samples
        plan = active_samples // self.cfg.train.batch_size
        epoch_order = shard_order(self.cfg.seed, epoch, len(self.pool.shards)).tolist()
        if resuming and recorded_order is not None and recorded_order != epoch_order and self.rank == 0:
            say("[pretrain] warning: the pool's shards changed since the checkpoint; the continued epoch "
                "follows the shard order of the current pool")
        return active_samples, plan, epoch_order

    def batches(self, epoch: int, epoch_steps: int, skip_batches: int, gen: torch.Generator) -> Iterable[Any]:
        return self.feed.epoch_batches(epoch, epoch_steps, skip_batches=skip_batches)

    def pixels_and_ids(self, i: int, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's crops ([V, B, C, S, S], uint8, on the host) and global sample ids."""
        return batch.crops, batch.ids

    def views(self, pixels: torch.Tensor, lo: int, hi: int, gen: torch.Generator, num_views: int) -> list[torch.Tensor]:
        # crops were cut in Ray Data; colour, grayscale, blur batched on this device
        return [colour_views(pixels[v, lo:hi].to(self.device, non_blocking=True), self.feed.recipe, gen)
                for v in range(num_views)]

    def epoch_counts(self, trained: int) -> list[float]:
        c = self.feed.counters
        return [c.samples - c.padded, c.padded, c.skipped_samples, len(c.skipped_shards)]

    def seen(self) -> tuple[list[int], list[str] | None]:
        return self.feed.counters.ids, self.feed.counters.keys

    def pool_classes(self) -> int:
        return len(self.feed.counters.labels)


WorkerData = MemoryData | StreamData
