"""Pretraining on Ray Train: the train function is plain torch, Ray wraps it.

Ray gives the function its data shard (``get_dataset_shard``), gathers metrics
and checkpoints (``ray.train.report``), restarts failed workers
(``FailureConfig``) and, on a re-run with the same run directory, hands back the
latest checkpoint (``get_checkpoint``), from which the loop resumes at the
exact step: the LR schedule is a pure function of the step, and the metric
history travels inside the checkpoint.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, ScalingConfig
from ray.train import RunConfig as TrainRunConfig
from ray.train.torch import TorchTrainer

import storage
from pipelines.allocator import allocator_in_use, resolve_allocator
from pipelines.config import RunConfig, config_from_dict, config_to_dict
from pipelines.console import say
from pipelines.device import autocast as autocast_on, resolve_precision, train_device
from pipelines.dynamic import PruningRound, load_keep_list, select_subset, stream_round
from pipelines.feed import ShardPool, StreamFeed, choose_cache, shard_order
from pipelines.models import build_method_from_config, forward_takes_index, view_recipe
from pipelines.monitor import MonitorSets, OnlineMonitor
from pipelines.tracking import open_tracker
from ssl_models.augment import RENDERERS, colour_views
from ssl_models.optim import LARS, lars_param_groups
from ssl_models.schedules import SCHEDULES

CHECKPOINT_FILE = "state.pt"


@dataclass
class PretrainResult:
    checkpoint_path: Path | str  # a uri when the run directory is in object storage
    history: list[dict[str, Any]]
    seconds: float


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _load_local_shard(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
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


def _checkpoint_at(location: str) -> Checkpoint:
    """A Ray ``Checkpoint`` for a folder that is local or in object storage (downloaded on ``as_directory``)."""
    if not storage.is_uri(location):
        return Checkpoint.from_directory(location)
    fs, path = storage.filesystem_for(location)
    return Checkpoint(path, filesystem=fs)


def _save_local_checkpoint(state: dict[str, Any], root: str, name: str, keep: int = 2) -> Checkpoint:
    """Write ``root/NAME/state.pt`` whole or not at all (``storage.open_output``: temp + rename locally,
    one upload to a bucket) and prune old ones; ``root`` is a local folder or a uri.

    ``NAME`` is ``epoch_NNNNNN`` (epochs finished) or ``epoch_NNNNNN_step_SSSSSSSSS`` (inside the next
    epoch), so names sort in training order."""
    final = storage.join(root, name)
    with storage.open_output(storage.join(final, CHECKPOINT_FILE)) as f:
        torch.save(state, f)
    done = [n for n in storage.list_dir(root) if n.startswith("epoch_")]
    for old in done[:-keep]:
        storage.delete(storage.join(root, old))
    return _checkpoint_at(final)


def _latest_local_checkpoint(root: str) -> Checkpoint | None:
    """The newest ``epoch_*`` folder under ``root`` that holds a whole checkpoint file (a kill can leave
    an empty folder behind, never a partial file)."""
    for name in reversed(storage.list_dir(root)):
        if name.startswith("epoch_") and storage.is_file(storage.join(root, name, CHECKPOINT_FILE)):
            return _checkpoint_at(storage.join(root, name))
    return None


def _build_optimizer(method: torch.nn.Module, tc: Any) -> torch.optim.Optimizer:
    params = [p for p in method.parameters() if p.requires_grad]
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    if tc.optimizer == "lars":
        return LARS(lars_param_groups(method), lr=tc.lr, weight_decay=tc.weight_decay)
    return torch.optim.SGD(params, lr=tc.lr, momentum=0.9, weight_decay=tc.weight_decay)


def _prune(dyn: Any, backbone: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: Any, seed: int,
           epoch: int, rank: int) -> "PruningRound":
    """A dynamic-pruning round on this worker's pool; the seed depends on the epoch, so a resumed
    run re-selects the same way from the restored model."""
    with eager_only():
        return select_subset(dyn.policy, backbone, images, labels, recipe, keep_fraction=dyn.keep_fraction,
                             subset_for_clustering=dyn.subset_for_clustering, levels=list(dyn.levels),
                             resampling_steps=dyn.resampling_steps, seed=seed * 7919 + epoch * 31 + rank)


def eager_only() -> Any:
    """Run compiled modules eagerly inside this block: embedding passes (kNN monitor, pruning rounds)
    see eval mode and odd batch sizes, each of which would cost a fresh compile of the backbone."""
    return torch.compiler.set_stance("force_eager")


def compile_backbone(method: torch.nn.Module) -> None:
    """Compile the backbone in place (``nn.Module.compile``): parameters, state-dict keys and therefore
    checkpoints stay exactly those of the eager module, so compiled and eager runs resume each other.
    ``dynamic=False``: training batches all have the worker's local batch size."""
    method.backbone.compile(dynamic=False)


def _count_nodes() -> int:
    """How many distinct Ray nodes the workers of this run are on (logged, and reported as a metric)."""
    node = ray.get_runtime_context().get_node_id()
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    ids: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(ids, node)
    return len(set(ids))


def _should_stop(stop: bool, device: torch.device) -> bool:
    """Rank 0 decides (time budget); every rank must agree or DDP would hang. The flag lives on the
    training device: NCCL, the process group of GPU workers, moves no CPU tensors."""
    if not (dist.is_available() and dist.is_initialized()):
        return stop
    flag = torch.tensor([1.0 if stop else 0.0], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


class CheckpointRefused(ValueError):
    """A checkpoint to resume from that a weights-only load refuses (pickled code, truncation)."""


def _load_resume_state(path: Path) -> dict[str, Any]:
    """Weights-only load of a checkpoint to resume from: a checkpoint is untrusted input."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickled code, truncation, not a torch file
        raise CheckpointRefused(
            f"cannot resume from {path}: a weights-only load refused it ({str(exc).splitlines()[0][:160]}); "
            "remove that checkpoint directory to resume from an earlier one, or start over with --overwrite"
        ) from None


def _refused_checkpoint(exc: BaseException) -> CheckpointRefused | None:
    """The CheckpointRefused inside a Ray Train failure, if that is what stopped it."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, CheckpointRefused):
            return e
        if "CheckpointRefused" in type(e).__name__ or "cannot resume from" in str(e):
            line = next((l for l in str(e).splitlines() if "cannot resume from" in l), str(e))
            return CheckpointRefused(line[line.index("cannot resume from"):] if "cannot resume from" in line else line)
        stack.extend([e.__cause__, e.__context__, *getattr(e, "worker_failures", {}).values()]
                     if isinstance(getattr(e, "worker_failures", None), dict) else [e.__cause__, e.__context__])
    return None


def _sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Each rank's own numbers, summed over all ranks (one all-reduce on the training device: NCCL
    moves no CPU tensors). Metrics that describe the whole run's data (kept samples, samples read,
    bad shards) are such sums, never rank 0's figure times the world size."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


def _broadcast_from_rank0(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a pruning round's keep-list)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _write_seen(run_dir: str | None, epoch: int, rank: int, ids: list[int], keys: list[str] | None) -> None:
    """``train.record_seen_keys``: what this worker trained on in ``epoch`` (1-based), in order."""
    if run_dir is None:
        return
    import pyarrow as pa

    from curation.manifest import write_table_atomic

    columns: dict[str, Any] = {"sample_id": pa.array(ids, pa.int64())}
    if keys is not None:
        columns["key"] = pa.array(keys, pa.string())
    write_table_atomic(pa.table(columns), storage.join(run_dir, "seen_keys", f"epoch_{epoch:06d}_rank_{rank}.parquet"))


def _pruning_due(dyn: Any, epoch: int) -> bool:
    return dyn.policy != "none" and epoch >= dyn.warmup_epochs and (epoch - dyn.warmup_epochs) % dyn.every_epochs == 0


def train_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train worker function: SSL pretraining of ``loop_config['config']``.

    The feed (``loop_config['feed']``) is ``memory`` (this worker's part of the pool, decoded
    once, from Ray Train's dataset shard) or ``stream`` (each epoch a Ray Data job over this
    worker's part of the epoch's shard order; ``pipelines/feed.py``). Both plan the same steps:
    ``pool samples // global batch`` per epoch, every worker exactly that many batches.

    Resume: a checkpoint records the epoch, the step, the steps already taken in the epoch, the
    view generator's state, the epoch's shard order and the keep-list in force. A run resumed
    from a checkpoint taken inside an epoch (``train.checkpoint_every_steps``) *continues* that
    epoch: the same shard order and windows, its trained batches skipped, the rest trained once.
    """
    cfg = config_from_dict(loop_config["config"])
    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(tc.threads_per_worker or max(1, math.ceil(tc.cpus_per_worker)))

    local_batch = tc.batch_size // world
    device = train_device(tc.use_gpu)
    stream = loop_config.get("feed") == "stream"
    pool = ShardPool.from_dict(loop_config["pool"]) if loop_config.get("pool") else None
    run_dir = loop_config.get("run_dir") or None  # a local folder or a uri: keep-lists, seen keys
    t_load = t_begin = time.time()
    images = labels = None
    if stream:
        pool_samples = pool.total
        num_samples = pool_samples
    else:
        images, labels = _load_local_shard(local_batch)
        num_samples = len(images) * world  # sizes per-sample state (iSogCLR): ids are rank * len + index
        pool_samples = pool.total if pool is not None else int(_sum_over_ranks([len(images)], device)[0])
    load_seconds = time.time() - t_load  # reading + decoding this worker's shard (memory feed)
    method = build_method_from_config(cfg, num_samples=num_samples)
    memory_format = (torch.channels_last if tc.channels_last and not cfg.backbone.name.startswith("vit")
                     else torch.contiguous_format)
    precision = resolve_precision(tc.precision, device)
    # parameters keep their identity from here on (the optimizer is built below)
    method = method.to(device=device, memory_format=memory_format)
    needs_index = forward_takes_index(method)
    recipe = view_recipe(cfg)
    render_view = RENDERERS[cfg.augment.renderer]
    num_views = method.num_views
    feed = StreamFeed(pool, recipe, channels=cfg.data.channels, num_views=num_views, local_batch=local_batch,
                      window_batches=cfg.data.shuffle_window_batches, seed=cfg.seed, rank=rank, world=world,
                      max_pixels=cfg.curate.max_pixels, intensity=cfg.data.intensity,
                      record_keys=tc.record_seen_keys) if stream else None
    if tc.sync_batchnorm and world > 1:
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    if tc.compile:
        compile_backbone(method)
    opt = _build_optimizer(method, tc)

    start_epoch, step, history, resumes, skip_batches = 0, 0, [], 0, 0
    gen_state, keep_path, recorded_order = None, None, None
    local_dir = loop_config.get("local_checkpoint_dir")  # a local folder or a uri
    ckpt = ray.train.get_checkpoint() or (_latest_local_checkpoint(local_dir) if local_dir else None)
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = _load_resume_state(Path(d) / CHECKPOINT_FILE)
        method.load_state_dict(state["method"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, step, history = state["epoch"], state["step"], list(state["history"])
        resumes = int(state.get("resumes", 0)) + 1
        skip_batches = int(state.get("epoch_step", 0))
        gen_state = state.get("generator") if skip_batches else None
        keep_path = state.get("keep_list")
        recorded_order = state.get("shard_order")
        if rank == 0:
            say(f"[pretrain] resumed from checkpoint at epoch {start_epoch}, step {step}"
                + (f"; continuing epoch {start_epoch + 1} at its batch {skip_batches + 1} (same shard order and "
                   f"shuffle windows; its {skip_batches} trained batch(es) are skipped, not replayed)"
                   if skip_batches else ""))
    if stream and keep_path:
        feed.set_keep(_broadcast_from_rank0(load_keep_list(pool, storage.join(run_dir, keep_path)) if rank == 0 else None))

    model = ray.train.torch.prepare_model(method) if world > 1 else method
    nodes = _count_nodes()
    if rank == 0:
        say(f"[pretrain] {world} worker(s) on {nodes} node(s), {device.type}, {precision}, malloc: {allocator_in_use()}")
    monitor = OnlineMonitor.start(cfg, rank, loop_config)  # its own sampled sets, never this worker's pool
    steps_per_epoch = pool_samples // tc.batch_size  # on the full pool: it fixes the step budget
    if steps_per_epoch == 0:
        raise RuntimeError(f"the pool of {pool_samples} samples is smaller than one global batch "
                           f"(train.batch_size={tc.batch_size})")
    total_steps = steps_per_epoch * tc.epochs  # pruned runs take more, shorter epochs to the same step count
    if tc.max_steps:  # a step budget instead of an epoch count (the last epoch may end part-way)
        total_steps = tc.max_steps
    warmup_steps = steps_per_epoch * tc.warmup_epochs
    schedule = SCHEDULES[tc.schedule]
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    autocast = autocast_on(device, precision)
    dyn = cfg.dynamic
    active = torch.arange(len(images)) if images is not None else None
    if not stream and dyn.policy != "none" and start_epoch > dyn.warmup_epochs:
        last_round = dyn.warmup_epochs + (start_epoch - dyn.warmup_epochs) // dyn.every_epochs * dyn.every_epochs
        active = _prune(dyn, _unwrap(model).backbone, images, labels, recipe, cfg.seed, last_round, rank).indices
    t_start = time.time()
    epoch = start_epoch
    micro = local_batch // tc.grad_accum_steps
    tracker = open_tracker(cfg, loop_config, rank, history)  # live metrics.jsonl + TensorBoard/MLflow (rank 0)
    first_step_seconds: float | None = None

    while step < total_steps:
        round_info: dict[str, Any] = {}
        if _pruning_due(dyn, epoch) and skip_batches == 0:  # a continued epoch keeps the keep-list it had
            if stream:
                keep, round_info, keep_path = None, {}, None
                if rank == 0:
                    pruned = stream_round(cfg, _unwrap(model).backbone, pool, epoch=epoch, run_dir=run_dir)
                    keep, round_info, keep_path = pruned.keep, pruned.info, pruned.path
                keep, round_info, keep_path = _broadcast_from_rank0((keep, round_info, keep_path))
                feed.set_keep(keep)
            else:
                pruned = _prune(dyn, _unwrap(model).backbone, images, labels, recipe, cfg.seed, epoch, rank)
                active, round_info = pruned.indices, pruned.info
        model.train()
        gen.manual_seed(cfg.seed * 100003 + epoch * 1009 + rank)  # resumable: the epoch fixes the RNG
        epoch_start_step = step - skip_batches
        if stream:
            active_samples = feed.active_samples
            plan = active_samples // tc.batch_size
            epoch_order = shard_order(cfg.seed, epoch, len(pool.shards)).tolist()
            if skip_batches and recorded_order is not None and recorded_order != epoch_order and rank == 0:
                say("[pretrain] warning: the pool's shards changed since the checkpoint; the continued epoch "
                    "follows the shard order of the current pool")
        else:
            order = active[torch.randperm(len(active), generator=gen)]
            active_samples = int(_sum_over_ranks([len(active)], device)[0])  # every rank's own kept count
            plan = steps_per_epoch if len(active) == len(images) else active_samples // tc.batch_size
            epoch_order = None
        epoch_steps = min(plan, total_steps - epoch_start_step)
        if epoch_steps == 0:
            raise RuntimeError(f"pruned pool of {active_samples} is smaller than one global batch {tc.batch_size}")
        if gen_state is not None:  # continuing an epoch: the view generator as it was at the checkpoint
            gen.set_state(gen_state)
            gen_state = None
        padded = 0
        if stream:
            batches: Any = feed.epoch_batches(epoch, epoch_steps, skip_batches=skip_batches)
        else:
            need = epoch_steps * local_batch
            if len(order) < need:  # fewer decoded samples than planned (a decode failure): repeat, counted
                padded = need - len(order)
                order = torch.cat([order, order[torch.randint(len(order), (padded,), generator=gen)]])
            batches = range(skip_batches, epoch_steps)
        seen_ids: list[int] = []
        t_epoch, losses = time.time(), []
        last_progress = t_epoch
        for i, batch in enumerate(batches, start=skip_batches):
            if stream:
                pixels, ids_all = batch.crops, batch.ids
            else:
                idx = order[i * local_batch : (i + 1) * local_batch]
                pixels, ids_all = images[idx].to(device, non_blocking=True), idx + rank * len(images)
                if tc.record_seen_keys:
                    seen_ids.extend(ids_all.tolist())
            lr = schedule(step, total_steps, warmup_steps, tc.lr)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            step_loss = 0.0
            for j in range(tc.grad_accum_steps):
                lo, hi = j * micro, (j + 1) * micro
                if stream:  # crops were cut in Ray Data; colour, grayscale, blur batched on this device
                    views = [colour_views(pixels[v, lo:hi].to(device, non_blocking=True), recipe, gen)
                             .contiguous(memory_format=memory_format) for v in range(num_views)]
                else:
                    views = [render_view(pixels[lo:hi], recipe, gen).contiguous(memory_format=memory_format)
                             for _ in range(num_views)]
                # DDP all-reduces only on the last micro-batch; earlier ones just accumulate locally
                sync = model.no_sync() if (j + 1 < tc.grad_accum_steps and hasattr(model, "no_sync")) else nullcontext()
                with sync, autocast:
                    if needs_index:  # global sample ids
                        loss, logs = model(views, index=ids_all[lo:hi].to(device))
                    else:
                        loss, logs = model(views)
                    (loss / tc.grad_accum_steps).backward()
                step_loss += logs["loss"] / tc.grad_accum_steps
            opt.step()
            _unwrap(model).on_step_end(step, total_steps)
            step += 1
            if first_step_seconds is None:  # start-up cost of this (re)start: pool load or stream start
                first_step_seconds = time.time() - t_begin
            losses.append(step_loss)
            now = time.time()
            if rank == 0 and tc.progress_every_s > 0 and now - last_progress >= tc.progress_every_s and i + 1 < epoch_steps:
                last_progress = now  # a CPU epoch can take an hour: say where it is in between
                done = i + 1 - skip_batches
                say(f"[pretrain] epoch {epoch + 1}  step {i + 1}/{epoch_steps}  loss {step_loss:.4f}  "
                    f"{done * tc.batch_size / (now - t_epoch):.1f} img/s  "
                    f"epoch ETA {(now - t_epoch) / done * (epoch_steps - i - 1):.0f}s")
            if tc.checkpoint_every_steps and step % tc.checkpoint_every_steps == 0 and i + 1 < epoch_steps:
                _report_mid_epoch(model, opt, loop_config, local_dir, rank, epoch=epoch, step=step, epoch_step=i + 1,
                                  history=history, resumes=resumes, generator=gen, shard_order=epoch_order,
                                  keep_list=keep_path)
        trained = epoch_steps - skip_batches
        skip_batches = 0
        epoch += 1
        seconds = time.time() - t_epoch
        if stream:
            c = feed.counters
            own = [c.samples - c.padded, c.padded, c.skipped_samples, len(c.skipped_shards)]
        else:
            own = [trained * local_batch - padded, padded, 0, 0]
        samples_seen, padded_all, skipped_samples, skipped_shards = _sum_over_ranks(own, device)
        if tc.record_seen_keys:
            _write_seen(run_dir, epoch, rank, feed.counters.ids if stream else seen_ids,
                        feed.counters.keys if stream else None)
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "loss": sum(losses) / len(losses),
            "lr": lr,
            "images_per_s": trained * tc.batch_size / seconds,
            "epoch_seconds": seconds,
            "data_load_seconds": load_seconds,  # once per (re)start, before the first epoch
            # from the start of the train function (this (re)start) to the end of its first optimizer step
            "first_step_seconds": first_step_seconds,
            "active_samples": int(active_samples),  # the pool this epoch draws from, all workers together
            "samples_seen": int(samples_seen),  # trained on this epoch, all workers (a continued epoch: the rest)
            # planned batches that had to repeat samples because some never arrived, and what was missing:
            # a shard gone or cut short since curation, an image that no longer decodes
            "padded_samples": int(padded_all),
            "skipped_samples": int(skipped_samples),
            "skipped_shards": int(skipped_shards),
            # labelled classes in this worker's pool: all of them unless the worker split is skewed
            "pool_classes": (len(feed.counters.labels) if stream else int(torch.unique(labels[labels >= 0]).numel())),
            "resumes": resumes,  # how often this run restarted from a checkpoint (worker loss, re-run)
            "nodes": nodes,
        }
        metrics.update({f"prune_{k}": v for k, v in round_info.items() if isinstance(v, (int, float))})
        metrics.update(monitor.epoch_metrics(_unwrap(model).backbone, epoch))  # same keys on every rank
        history.append(metrics)
        tracker.log_epoch(metrics)
        elapsed = time.time() - t_start
        stop = _should_stop(tc.time_budget_s > 0 and elapsed >= tc.time_budget_s and step < total_steps, device)
        if rank == 0:
            eta = seconds / max(1, trained) * (total_steps - step)
            say(
                f"[pretrain] epoch {epoch}  step {step}/{total_steps}  loss {metrics['loss']:.4f}  lr {lr:.2e}  "
                f"{metrics['images_per_s']:.0f} img/s"
                + monitor.describe(metrics)
                + (f"  pruned to {metrics['active_samples']} ({round_info['round_seconds']:.1f}s)" if round_info else "")
                + (f"  skipped {int(skipped_shards)} shard(s), {int(skipped_samples)} image(s); "
                   f"{int(padded_all)} sample(s) repeated to keep the planned steps" if padded_all or skipped_samples
                   or skipped_shards else "")
                + f"  elapsed {elapsed:.0f}s  eta {eta:.0f}s"
                + ("  (time budget reached, stopping)" if stop else "")
            )
        last = stop or step >= total_steps
        if last or epoch % tc.checkpoint_every_epochs == 0:
            state = _train_state(model, opt, loop_config, epoch=epoch, step=step, epoch_step=0, history=history,
                                 resumes=resumes, generator=None, shard_order=None, keep_list=keep_path)
            _report(state, metrics, local_dir, rank, f"epoch_{epoch:06d}")
        else:
            ray.train.report(metrics)
        if stop:
            break
    tracker.close()


def _train_state(model: torch.nn.Module, opt: torch.optim.Optimizer, loop_config: dict[str, Any], *, epoch: int,
                 step: int, epoch_step: int, history: list[dict[str, Any]], resumes: int,
                 generator: torch.Generator | None, shard_order: list[int] | None, keep_list: str | None) -> dict[str, Any]:
    """What a checkpoint holds: enough to continue at ``step`` exactly (weights-only loadable types)."""
    state: dict[str, Any] = {
        "method": _unwrap(model).state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": epoch,  # epochs finished
        "step": step,
        "epoch_step": epoch_step,  # batches already trained in epoch ``epoch`` (0 at an epoch's end)
        "history": history,
        "resumes": resumes,
        "keep_list": keep_list,  # run-dir-relative keep-list of the last stream pruning round, if any
        "config": loop_config["config"],  # a checkpoint can be evaluated or exported on its own
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    if shard_order is not None:
        state["shard_order"] = shard_order
    return state


def _report(state: dict[str, Any], metrics: dict[str, Any], local_dir: str | None, rank: int, name: str) -> None:
    """Every rank reports; rank 0's checkpoint is the one kept."""
    if local_dir is not None:  # in-process mode: Ray keeps checkpoints only in memory
        ray.train.report(metrics, checkpoint=_save_local_checkpoint(state, local_dir, name))
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            torch.save(state, Path(tmp) / CHECKPOINT_FILE)
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def _report_mid_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, loop_config: dict[str, Any],
                      local_dir: str | None, rank: int, *, epoch: int, step: int, epoch_step: int, **rest: Any) -> None:
    """A checkpoint inside epoch ``epoch`` (``train.checkpoint_every_steps``), named so it sorts between
    the checkpoints of the epochs around it."""
    state = _train_state(model, opt, loop_config, epoch=epoch, step=step, epoch_step=epoch_step, **rest)
    _report(state, {"epoch": epoch, "step": step, "epoch_step": epoch_step}, local_dir, rank,
            f"epoch_{epoch:06d}_step_{step:09d}")


def _with_storage_env(env: dict[str, str]) -> Callable[[dict[str, Any]], None]:
    """``train_loop`` run under the driver's object-store settings (``storage.apply_env``): a Train worker
    on any node then writes run-dir files and reads shards as the driver would, whatever its own
    environment holds. Carried in the pickled function, not in ``train_loop_config``, which Ray Train
    records in its run state (visible in the dashboard)."""

    def train_loop_with_storage_env(loop_config: dict[str, Any]) -> None:
        storage.apply_env(env)
        train_loop(loop_config)

    return train_loop_with_storage_env


def iid_worker_split(dataset: "ray.data.Dataset", seed: int) -> "ray.data.Dataset":
    """Shuffle rows globally once so each DDP worker's pool is an iid sample of the whole set.

    Ray Train splits the train set by blocks, and blocks follow the shards. Shards cut from a
    class-sorted folder (ImageFolder's layout, and how crawls sorted by site arrive) hold one or two
    classes each, so without this worker 0 would train on classes 0-4 and worker 1 on 5-9: per-worker
    BatchNorm then learns which worker an image came from, every negative gathered from the other
    worker becomes trivially easy, and SimCLR on CIFAR-10 learned about half as much in one epoch.
    The pool is held in workers' memory anyway, so one all-to-all shuffle of it is cheap.
    """
    return dataset.random_shuffle(seed=seed)


def plan_feed(cfg: RunConfig, data: "ray.data.Dataset | ShardPool") -> tuple[str, "ray.data.Dataset | None"]:
    """(feed mode, the dataset Ray Train splits for the memory feed): ``data.cache`` resolved against the
    pool, said once, and the pool-size check made before any worker starts."""
    from curation.errors import InputError
    from pipelines.readers import read_decoded

    if not isinstance(data, ShardPool):  # already decoded rows (tests, sweeps, benches): the memory feed
        if cfg.data.cache == "stream":
            raise InputError("data.cache=stream reads curated shards, but pretrain() was given a decoded dataset; "
                             "pass a ShardPool (pipelines.feed) or set data.cache=memory")
        return "memory", data
    tc = cfg.train
    if data.total < tc.batch_size:
        raise InputError(f"the curated pool holds {data.total} samples, fewer than one global batch "
                         f"(train.batch_size={tc.batch_size} over {max(1, tc.num_workers)} worker(s)); lower "
                         f"train.batch_size or curate more data")
    mode, why = choose_cache(cfg.data.cache, data.total, cfg.data.image_size, cfg.data.channels,
                             cfg.data.cache_budget_gb)
    say(f"[pretrain] feed: {mode}; {why}; {data.total} samples in {len(data.shards)} shard(s), "
        f"{data.total // tc.batch_size} steps per epoch")
    if mode == "stream":
        return mode, None
    d = cfg.data
    return mode, read_decoded(list(data.shards), d.image_size, d.channels, d.intensity).select_columns(["image", "label"])


def pretrain(
    cfg: RunConfig,
    dataset: "ray.data.Dataset | ShardPool",
    run_dir: str | Path,
    monitor: MonitorSets | None = None,
    *,
    name: str = "pretrain",
    callbacks: list[Any] | None = None,
) -> PretrainResult:
    """Fit ``cfg.method`` on ``dataset`` with Ray Train.

    ``dataset``: curated shards (a ``ShardPool``: fed from memory or streamed, by ``data.cache``) or a
    dataset of decoded rows (image uint8 HWC, label), which is fed from memory.
    ``monitor``: the online monitor's sets (pipelines/monitor.py: a labelled bank and queries for
    kNN, a pool sample for the label-free metrics); they are not split across workers.
    ``name`` is the Ray Train run name under ``run_dir`` (a sweep passes its trial id, so a re-run of the
    trial resumes); ``callbacks`` go to the Train RunConfig (a sweep passes Tune's TuneReportCallback).

    ``run_dir`` is a local folder or an object-store uri (``s3://bucket/runs/x``): Ray Train keeps its
    checkpoints and state there (``storage_path``, with the filesystem ``storage`` builds, so a custom
    endpoint and the driver's keys reach Train's controller and workers on any node). Checkpoints go
    to ``run_dir/<name>``; running again on the same run directory resumes from the latest one. The
    final state is copied to ``run_dir/checkpoint.pt``.
    """
    run_dir = str(run_dir) if storage.is_uri(run_dir) else str(Path(run_dir).resolve())
    if storage.is_uri(run_dir):
        storage_filesystem, storage_path = storage.filesystem_for(run_dir)
    else:
        storage_filesystem, storage_path = None, run_dir
    t0 = time.time()
    tc = cfg.train
    worker_env: dict[str, str] = {}
    if tc.num_workers > 0:  # in-process mode runs in this (already started) process: nothing to preload
        allocator = resolve_allocator(tc.allocator)
        worker_env = allocator.env
        say(f"[pretrain] workers' malloc: {allocator.name}" + (f" ({allocator.library})" if allocator.library else ""))
    pool = dataset if isinstance(dataset, ShardPool) else None
    feed, dataset = plan_feed(cfg, dataset)
    if dataset is not None and tc.num_workers > 1:
        dataset = iid_worker_split(dataset, cfg.seed)
    monitor_datasets = monitor.datasets() if monitor is not None else {}
    trainer = TorchTrainer(
        _with_storage_env(storage.storage_env()),
        train_loop_config={
            "config": config_to_dict(cfg),
            "feed": feed,
            "pool": pool.to_dict() if pool is not None else None,
            # ScalingConfig(num_workers=0) runs in this process and persists no checkpoints itself
            "local_checkpoint_dir": storage.join(run_dir, name, "local_checkpoints") if tc.num_workers == 0 else None,
            # told, not probed: Ray's in-process mode asserts on a missing dataset shard
            "monitor_sets": sorted(monitor_datasets),
            # rank 0 writes metrics.jsonl, tb/ there as each epoch ends; the stream feed its keep-lists
            "run_dir": str(run_dir),
        },
        scaling_config=ScalingConfig(
            num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker={"CPU": tc.cpus_per_worker}
        ),
        run_config=TrainRunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            callbacks=callbacks or [],
            failure_config=FailureConfig(max_failures=tc.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": worker_env} if worker_env else None,
        ),
        datasets={**({"train": dataset} if dataset is not None else {}), **monitor_datasets},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # noqa: BLE001 - a refused checkpoint becomes one clear line, not a Ray traceback
        refused = _refused_checkpoint(exc)
        if refused is None:
            raise
        from curation.errors import InputError

        raise InputError(str(refused)) from None
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    final = storage.join(run_dir, "checkpoint.pt")
    with result.checkpoint.as_directory() as d:  # a bucket checkpoint is downloaded to a temp folder
        storage.put_file(Path(d) / CHECKPOINT_FILE, final)
        state = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    return PretrainResult(final if storage.is_uri(final) else Path(final), list(state["history"]), time.time() - t0)


def load_backbone(cfg: RunConfig, checkpoint: str | Path) -> torch.nn.Module:
    """The trained backbone from a checkpoint written by ``pretrain`` (safe load: weights only)."""
    from pipelines.checkpoints import load_checkpoint

    _, state = load_checkpoint(checkpoint)
    method = build_method_from_config(cfg)
    method.load_state_dict(state["method"])
    return method.backbone
