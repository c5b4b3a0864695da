"""The Ray Train worker function: SSL pretraining as a short loop over named steps.

``train_loop`` reads as the run does: data, model, resume, then per epoch prune, train (steps),
monitor, checkpoint. ``Worker`` holds what those steps share (the method, optimizer, the position in
the run). The feed behind ``Worker.data`` is pipelines/worker_data.py (memory or stream, one
interface); checkpoints are pipelines/train_checkpoints.py; collectives pipelines/ranks.py.

Every rank runs the same collectives in the same order (DDP would hang otherwise): the step order here
is part of the behaviour, as is the order in which the view generator is drawn from.

Resume: a checkpoint records the epoch, the step, the steps already taken in the epoch, the view
generator's state, the epoch's shard order and the keep-list in force. A run resumed from a checkpoint
taken inside an epoch (``train.checkpoint_every_steps``) *continues* that epoch: the same shard order
and windows, its trained batches skipped, the rest trained once.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from pipelines.allocator import allocator_in_use
from pipelines.config import config_from_dict
from pipelines.console import say
from pipelines.device import autocast as autocast_on, resolve_precision, train_device
from pipelines.feed import ShardPool, StreamFeed
from pipelines.models import build_method_from_config, forward_takes_index, view_recipe
from pipelines.monitor import OnlineMonitor
from pipelines.ranks import count_nodes, should_stop, sum_over_ranks
from pipelines.tracking import open_tracker
from pipelines.train_checkpoints import (
    CHECKPOINT_FILE,
    checkpoint_name,
    latest_local_checkpoint,
    load_resume_state,
    report_checkpoint,
    train_state,
    unwrap,
)
from pipelines.train_model import build_optimizer, compile_backbone
from pipelines.worker_data import MemoryData, StreamData, WorkerData, load_local_shard, pruning_due, write_seen
from ssl_models.methods.base import SSLMethod
from ssl_models.schedules import SCHEDULES


@dataclass
class Position:
    """Where the run is: restored from a checkpoint on resume, saved into the next one."""

    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken
    history: list[dict[str, Any]] = field(default_factory=list)
    resumes: int = 0
    skip_batches: int = 0  # batches of epoch ``epoch`` trained before the checkpoint (a continued epoch)
    gen_state: torch.Tensor | None = None  # the view generator at a mid-epoch checkpoint
    recorded_order: list[int] | None = None  # that epoch's shard order (stream feed)


@dataclass
class EpochRun:
    """What one epoch trained: its batches, losses, last learning rate and time."""

    steps: int  # batches planned this epoch (a continued epoch: its skipped ones included)
    trained: int
    losses: list[float]
    lr: float
    seconds: float
    active_samples: int


def train_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train worker function: SSL pretraining of ``loop_config['config']`` (see the module docstring)."""
    worker = Worker(loop_config)
    worker.load_data()
    worker.build_model()
    worker.resume()
    worker.start()
    while worker.pos.step < worker.total_steps:
        round_info = worker.prune()
        epoch = worker.train_epoch()
        metrics = worker.monitor(epoch, round_info)
        if worker.checkpoint(metrics, epoch, round_info):
            break
    worker.tracker.close()


class Worker:
    """One Train worker's state across the steps of ``train_loop``."""

    def __init__(self, loop_config: dict[str, Any]) -> None:
        self.loop_config = loop_config
        self.cfg = cfg = config_from_dict(loop_config["config"])
        self.tc = tc = cfg.train
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        torch.set_num_threads(tc.threads_per_worker or max(1, math.ceil(tc.cpus_per_worker)))
        self.local_batch = tc.batch_size // self.world
        self.device = train_device(tc.use_gpu)
        self.stream = loop_config.get("feed") == "stream"
        self.pool = ShardPool.from_dict(loop_config["pool"]) if loop_config.get("pool") else None
        self.run_dir: str | None = loop_config.get("run_dir") or None  # a local folder or a uri: keep-lists, seen keys
        self.local_dir: str | None = loop_config.get("local_checkpoint_dir")  # a local folder or a uri
        self.pos = Position()
        self.first_step_seconds: float | None = None
        self.lr = 0.0

    # ------------------------------------------------------------------ data
    def load_data(self) -> None:
        """The memory feed decodes this worker's shard now; the stream feed reads per epoch."""
        self.t_begin = t_load = time.time()
        self.shard: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.stream:
            assert self.pool is not None, "the stream feed needs the curated pool"
            self.pool_samples = self.num_samples = self.pool.total
        else:
            images, labels = self.shard = load_local_shard(self.local_batch)
            self.num_samples = len(images) * self.world  # sizes per-sample state (iSogCLR): ids are rank * len + index
            self.pool_samples = (self.pool.total if self.pool is not None
                                 else int(sum_over_ranks([len(images)], self.device)[0]))
        self.load_seconds = time.time() - t_load  # reading + decoding this worker's shard (memory feed)

    # ------------------------------------------------------------------ model
    def build_model(self) -> None:
        """The method on its device (parameters keep their identity from here on), the feed, the optimizer."""
        cfg, tc = self.cfg, self.tc
        method = build_method_from_config(cfg, num_samples=self.num_samples)
        self.memory_format = (torch.channels_last if tc.channels_last and not cfg.backbone.name.startswith("vit")
                              else torch.contiguous_format)
        self.precision = resolve_precision(tc.precision, self.device)
        # torch's stubs lack the device + memory_format overload that Module.to takes at runtime
        method = method.to(device=self.device, memory_format=self.memory_format)  # type: ignore[call-overload]
        self.needs_index = forward_takes_index(method)
        recipe = view_recipe(cfg)
        self.num_views = method.num_views
        self.data: WorkerData
        if self.shard is None:
            assert self.pool is not None
            feed = StreamFeed(self.pool, recipe, channels=cfg.data.channels, num_views=self.num_views,
                              local_batch=self.local_batch, window_batches=cfg.data.shuffle_window_batches,
                              seed=cfg.seed, rank=self.rank, world=self.world, max_pixels=cfg.curate.max_pixels,
                              intensity=cfg.data.intensity, record_keys=tc.record_seen_keys)
            self.data = StreamData(feed, self.pool, cfg, rank=self.rank, run_dir=self.run_dir, device=self.device)
        else:
            self.data = MemoryData(*self.shard, cfg, recipe, rank=self.rank, local_batch=self.local_batch,
                                   device=self.device)
        if tc.sync_batchnorm and self.world > 1:
            method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
        if tc.compile:
            compile_backbone(method)
        self.method = method
        self.opt = build_optimizer(method, tc)

    # ------------------------------------------------------------------ resume
    def resume(self) -> None:
        """Continue from Ray Train's latest checkpoint (or, in-process, the latest local one), if any."""
        ckpt = ray.train.get_checkpoint() or (latest_local_checkpoint(self.local_dir) if self.local_dir else None)
        keep_path = None
        if ckpt is not None:
            with ckpt.as_directory() as d:
                state = load_resume_state(Path(d) / CHECKPOINT_FILE)
            self.method.load_state_dict(state["method"])
            self.opt.load_state_dict(state["optimizer"])
            skip = int(state.get("epoch_step", 0))
            self.pos = Position(epoch=state["epoch"], step=state["step"], history=list(state["history"]),
                                resumes=int(state.get("resumes", 0)) + 1, skip_batches=skip,
                                gen_state=state.get("generator") if skip else None,
                                recorded_order=state.get("shard_order"))
            keep_path = state.get("keep_list")
            if self.rank == 0:
                say(f"[pretrain] resumed from checkpoint at epoch {self.pos.epoch}, step {self.pos.step}"
                    + (f"; continuing epoch {self.pos.epoch + 1} at its batch {skip + 1} (same shard order and "
                       f"shuffle windows; its {skip} trained batch(es) are skipped, not replayed)" if skip else ""))
        self.data.restore_keep(keep_path)

    def start(self) -> None:
        """DDP, the monitor, the step budget and the LR schedule, the view generator, the tracker."""
        cfg, tc = self.cfg, self.tc
        self.model = ray.train.torch.prepare_model(self.method) if self.world > 1 else self.method
        self.nodes = count_nodes()
        if self.rank == 0:
            say(f"[pretrain] {self.world} worker(s) on {self.nodes} node(s), {self.device.type}, {self.precision}, "
                f"malloc: {allocator_in_use()}")
        self.online = OnlineMonitor.start(cfg, self.rank, self.loop_config)  # its own sampled sets, never this worker's pool
        self.steps_per_epoch = self.pool_samples // tc.batch_size  # on the full pool: it fixes the step budget
        if self.steps_per_epoch == 0:
            raise RuntimeError(f"the pool of {self.pool_samples} samples is smaller than one global batch "
                               f"(train.batch_size={tc.batch_size})")
        self.total_steps = self.steps_per_epoch * tc.epochs  # pruned runs take more, shorter epochs to the same step count
        if tc.max_steps:  # a step budget instead of an epoch count (the last epoch may end part-way)
            self.total_steps = tc.max_steps
        self.warmup_steps = self.steps_per_epoch * tc.warmup_epochs
        self.schedule = SCHEDULES[tc.schedule]
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.rank)
        self.autocast = autocast_on(self.device, self.precision)
        self.data.reselect(self.ssl_method().backbone, self.pos.epoch)
        self.t_start = time.time()
        self.micro = self.local_batch // tc.grad_accum_steps
        self.tracker = open_tracker(cfg, self.loop_config, self.rank, self.pos.history)  # metrics.jsonl + TB/MLflow (rank 0)

    def ssl_method(self) -> SSLMethod:
        """The method being trained, inside DDP's wrapper or not."""
        method = unwrap(self.model)
        assert isinstance(method, SSLMethod)
        return method

    # ------------------------------------------------------------------ prune
    def prune(self) -> dict[str, Any]:
        """A dynamic-pruning round when one is due (a continued epoch keeps the keep-set it had)."""
        if pruning_due(self.cfg, self.pos.epoch) and self.pos.skip_batches == 0:
            return self.data.prune(self.ssl_method().backbone, self.pos.epoch)
        return {}

    # ------------------------------------------------------------------ step
    def train_epoch(self) -> EpochRun:
        """Train one epoch (a continued epoch: its batches after the checkpoint's)."""
        pos, tc = self.pos, self.tc
        self.model.train()
        self.gen.manual_seed(self.cfg.seed * 100003 + pos.epoch * 1009 + self.rank)  # resumable: the epoch fixes the RNG
        epoch_start_step = pos.step - pos.skip_batches
        active_samples, plan, self.epoch_order = self.data.plan_epoch(
            pos.epoch, self.gen, self.steps_per_epoch, bool(pos.skip_batches), pos.recorded_order)
        epoch_steps = min(plan, self.total_steps - epoch_start_step)
        if epoch_steps == 0:
            raise RuntimeError(f"pruned pool of {active_samples} is smaller than one global batch {tc.batch_size}")
        if pos.gen_state is not None:  # continuing an epoch: the view generator as it was at the checkpoint
            self.gen.set_state(pos.gen_state)
            pos.gen_state = None
        skip = pos.skip_batches
        batches = self.data.batches(pos.epoch, epoch_steps, skip, self.gen)
        t_epoch, losses = time.time(), []
        last_progress = t_epoch
        for i, batch in enumerate(batches, start=skip):
            step_loss = self.train_step(i, batch)
            losses.append(step_loss)
            now = time.time()
            if (self.rank == 0 and tc.progress_every_s > 0 and now - last_progress >= tc.progress_every_s
                    and i + 1 < epoch_steps):
                last_progress = now  # a CPU epoch can take an hour: say where it is in between
                done = i + 1 - skip
                say(f"[pretrain] epoch {pos.epoch + 1}  step {i + 1}/{epoch_steps}  loss {step_loss:.4f}  "
                    f"{done * tc.batch_size / (now - t_epoch):.1f} img/s  "
                    f"epoch ETA {(now - t_epoch) / done * (epoch_steps - i - 1):.0f}s")
            if tc.checkpoint_every_steps and pos.step % tc.checkpoint_every_steps == 0 and i + 1 < epoch_steps:
                self.save(metrics={"epoch": pos.epoch, "step": pos.step, "epoch_step": i + 1}, epoch_step=i + 1,
                          name=checkpoint_name(pos.epoch, pos.step))
        trained = epoch_steps - skip
        pos.skip_batches = 0
        pos.epoch += 1
        return EpochRun(epoch_steps, trained, losses, self.lr, time.time() - t_epoch, active_samples)

    def train_step(self, i: int, batch: Any) -> float:
        """One optimizer step on batch ``i`` (``train.grad_accum_steps`` micro-batches); its loss."""
        tc, model = self.tc, self.model
        pixels, ids_all = self.data.pixels_and_ids(i, batch)
        self.lr = lr = self.schedule(self.pos.step, self.total_steps, self.warmup_steps, tc.lr)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        step_loss = 0.0
        for j in range(tc.grad_accum_steps):
            lo, hi = j * self.micro, (j + 1) * self.micro
            views = [v.contiguous(memory_format=self.memory_format)
                     for v in self.data.views(pixels, lo, hi, self.gen, self.num_views)]
            # DDP all-reduces only on the last micro-batch; earlier ones just accumulate locally
            no_sync = getattr(model, "no_sync", None)
            sync = no_sync() if (j + 1 < tc.grad_accum_steps and no_sync is not None) else nullcontext()
            with sync, self.autocast:
                if self.needs_index:  # global sample ids
                    loss, logs = model(views, index=ids_all[lo:hi].to(self.device))
                else:
                    loss, logs = model(views)
                (loss / tc.grad_accum_steps).backward()
            step_loss += logs["loss"] / tc.grad_accum_steps
        self.opt.step()
        self.ssl_method().on_step_end(self.pos.step, self.total_steps)
        self.pos.step += 1
        if self.first_step_seconds is None:  # start-up cost of this (re)start: pool load or stream start
            self.first_step_seconds = time.time() - self.t_begin
        return step_loss

    # ------------------------------------------------------------------ monitor
    def monitor(self, run: EpochRun, round_info: dict[str, Any]) -> dict[str, Any]:
        """The epoch's metrics (data counts summed over ranks, the online monitor's), logged and tracked."""
        pos, tc = self.pos, self.tc
        samples_seen, padded_all, skipped_samples, skipped_shards = sum_over_ranks(
            self.data.epoch_counts(run.trained), self.device)
        if tc.record_seen_keys:
            write_seen(self.run_dir, pos.epoch, self.rank, *self.data.seen())
        metrics: dict[str, Any] = {
            "epoch": pos.epoch,
            "step": pos.step,
            "loss": sum(run.losses) / len(run.losses),
            "lr": run.lr,
            "images_per_s": run.trained * tc.batch_size / run.seconds,
            "epoch_seconds": run.seconds,
            "data_load_seconds": self.load_seconds,  # once per (re)start, before the first epoch
            # from the start of the train function (this (re)start) to the end of its first optimizer step
            "first_step_seconds": self.first_step_seconds,
            "active_samples": int(run.active_samples),  # the pool this epoch draws from, all workers together
            "samples_seen": int(samples_seen),  # trained on this epoch, all workers (a continued epoch: the rest)
            # planned batches that had to repeat samples because some never arrived, and what was missing:
            # a shard gone or cut short since curation, an image that no longer decodes
            "padded_samples": int(padded_all),
            "skipped_samples": int(skipped_samples),
            "skipped_shards": int(skipped_shards),
            # labelled classes in this worker's pool: all of them unless the worker split is skewed
            "pool_classes": self.data.pool_classes(),
            "resumes": pos.resumes,  # how often this run restarted from a checkpoint (worker loss, re-run)
            "nodes": self.nodes,
        }
        metrics.update({f"prune_{k}": v for k, v in round_info.items() if isinstance(v, (int, float))})
        metrics.update(self.online.epoch_metrics(self.ssl_method().backbone, pos.epoch,  # same keys on every rank
                                                 final=pos.step >= self.total_steps))
        pos.history.append(metrics)
        self.tracker.log_epoch(metrics)
        return metrics

    # ------------------------------------------------------------------ checkpoint
    def checkpoint(self, metrics: dict[str, Any], run: EpochRun, round_info: dict[str, Any]) -> bool:
        """Say the epoch, checkpoint it (every ``train.checkpoint_every_epochs``, and the last) or just report
        it; whether the run stops here (the time budget, agreed by every rank)."""
        pos, tc = self.pos, self.tc
        elapsed = time.time() - self.t_start
        stop = should_stop(tc.time_budget_s > 0 and elapsed >= tc.time_budget_s and pos.step < self.total_steps,
                           self.device)
        if self.rank == 0:
            say(self._epoch_line(metrics, run, round_info, elapsed, stop))
        if stop or pos.step >= self.total_steps or pos.epoch % tc.checkpoint_every_epochs == 0:
            self.save(metrics=metrics, epoch_step=0, name=checkpoint_name(pos.epoch), at_epoch_end=True)
        else:
            ray.train.report(metrics)
        return stop

    def save(self, *, metrics: dict[str, Any], epoch_step: int, name: str, at_epoch_end: bool = False) -> None:
        """Report ``metrics`` with a checkpoint of the run at this point (inside an epoch: with the view
        generator and the epoch's shard order, so a resume continues the epoch exactly)."""
        pos = self.pos
        state = train_state(self.model, self.opt, self.loop_config, epoch=pos.epoch, step=pos.step,
                            epoch_step=epoch_step, history=pos.history, resumes=pos.resumes,
                            generator=None if at_epoch_end else self.gen,
                            shard_order=None if at_epoch_end else self.epoch_order, keep_list=self.data.keep_path)
        report_checkpoint(state, metrics, self.local_dir, self.rank, name)

    def _epoch_line(self, metrics: dict[str, Any], run: EpochRun, round_info: dict[str, Any], elapsed: float,
                    stop: bool) -> str:
        """Rank 0's line for the finished epoch."""
        pos = self.pos
        padded, skipped, shards = metrics["padded_samples"], metrics["skipped_samples"], metrics["skipped_shards"]
        eta = run.seconds / max(1, run.trained) * (self.total_steps - pos.step)
        return (
            f"[pretrain] epoch {pos.epoch}  step {pos.step}/{self.total_steps}  loss {metrics['loss']:.4f}  "
            f"lr {run.lr:.2e}  {metrics['images_per_s']:.0f} img/s"
            + self.online.describe(metrics)
            + (f"  pruned to {metrics['active_samples']} ({round_info['round_seconds']:.1f}s)" if round_info else "")
            + (f"  skipped {shards} shard(s), {skipped} image(s); {padded} sample(s) repeated to keep the planned steps"
               if padded or skipped or shards else "")
            + f"  elapsed {elapsed:.0f}s  eta {eta:.0f}s"
            + ("  (time budget reached, stopping)" if stop else "")
        )
