"""Pretraining on Ray Train: ``pretrain()`` builds the TorchTrainer, and its worker function is plain torch.

Ray gives the worker function (pipelines/train_loop.py) its data shard (``get_dataset_shard``), gathers
metrics and checkpoints (``ray.train.report``), restarts failed workers (``FailureConfig``) and, on a
re-run with the same run directory, hands back the latest checkpoint (``get_checkpoint``), from which
the loop resumes at the exact step: the LR schedule is a pure function of the step, and the metric
history travels inside the checkpoint (pipelines/train_checkpoints.py).

Names that moved to those modules are re-exported here for their importers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ray
import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, Result, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

import storage
from pipelines.allocator import resolve_allocator
from pipelines.config import PipelineConfig, config_to_dict
from pipelines.console import say
from pipelines.feed import ShardPool, choose_cache
from pipelines.models import build_method_from_config
from pipelines.monitor import MonitorSets
from pipelines.ranks import sum_over_ranks as _sum_over_ranks
from pipelines.train_checkpoints import CHECKPOINT_FILE, CheckpointRefused, read_state, refused_checkpoint
from pipelines.train_loop import train_loop
from pipelines.train_model import build_optimizer as _build_optimizer, compile_backbone, eager_only

__all__ = [
    "CHECKPOINT_FILE", "CheckpointRefused", "PretrainResult", "_build_optimizer", "_sum_over_ranks", "compile_backbone",
    "eager_only", "iid_worker_split", "load_backbone", "plan_feed", "pretrain", "train_loop",
]


@dataclass
class PretrainResult:
    checkpoint_path: Path | str  # a uri when the run directory is in object storage
    history: list[dict[str, Any]]
    seconds: float


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


def plan_feed(cfg: PipelineConfig, data: "ray.data.Dataset | ShardPool") -> tuple[str, "ray.data.Dataset | None"]:
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
    cfg: PipelineConfig,
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
    t0 = time.time()
    tc = cfg.train
    worker_env = _worker_env(cfg)
    pool = dataset if isinstance(dataset, ShardPool) else None
    feed, train_set = plan_feed(cfg, dataset)
    if train_set is not None and tc.num_workers > 1:
        train_set = iid_worker_split(train_set, cfg.seed)
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
        run_config=_run_config(cfg, run_dir, name, callbacks or [], worker_env),
        datasets={**({"train": train_set} if train_set is not None else {}), **monitor_datasets},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    final, history = _keep_final_checkpoint(_fit(trainer), run_dir)
    return PretrainResult(final if storage.is_uri(final) else Path(final), history, time.time() - t0)


def _worker_env(cfg: PipelineConfig) -> dict[str, str]:
    """Environment of the Train workers: the configured malloc preloaded (said once)."""
    if cfg.train.num_workers == 0:  # in-process mode runs in this (already started) process: nothing to preload
        return {}
    allocator = resolve_allocator(cfg.train.allocator)
    say(f"[pretrain] workers' malloc: {allocator.name}" + (f" ({allocator.library})" if allocator.library else ""))
    return allocator.env


def _run_config(cfg: PipelineConfig, run_dir: str, name: str, callbacks: list[Any], worker_env: dict[str, str]) -> RunConfig:
    """Ray Train's RunConfig: checkpoints and run state under ``run_dir/<name>`` (local or a bucket)."""
    if storage.is_uri(run_dir):
        storage_filesystem, storage_path = storage.filesystem_for(run_dir)
    else:
        storage_filesystem, storage_path = None, run_dir
    return RunConfig(
        name=name,
        storage_path=storage_path,
        storage_filesystem=storage_filesystem,
        callbacks=callbacks,
        failure_config=FailureConfig(max_failures=cfg.train.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        # Train V2's RunConfig (Ray's default) takes it; mypy reads the V1 class that ray.train imports first
        worker_runtime_env={"env_vars": worker_env} if worker_env else None,  # type: ignore[call-arg]
    )


def _fit(trainer: TorchTrainer) -> Result:
    """``trainer.fit()``; a refused checkpoint becomes one clear InputError line, not a Ray traceback."""
    try:
        return trainer.fit()
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a refused checkpoint
        refused = refused_checkpoint(exc)
        if refused is None:
            raise
        from curation.errors import InputError

        raise InputError(str(refused)) from None


def _keep_final_checkpoint(result: Result, run_dir: str) -> tuple[str, list[dict[str, Any]]]:
    """Copy the run's last checkpoint to ``run_dir/checkpoint.pt``; (its location, the metric history)."""
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    final = storage.join(run_dir, "checkpoint.pt")
    with result.checkpoint.as_directory() as d:  # a bucket checkpoint is downloaded to a temp folder
        storage.put_file(Path(d) / CHECKPOINT_FILE, final)
        state = read_state(Path(d) / CHECKPOINT_FILE)
    return final, list(state["history"])


def load_backbone(cfg: PipelineConfig, checkpoint: str | Path) -> torch.nn.Module:
    """The trained backbone from a checkpoint written by ``pretrain`` (safe load: weights only)."""
    from pipelines.checkpoints import load_checkpoint

    _, state = load_checkpoint(checkpoint)
    method = build_method_from_config(cfg)
    method.load_state_dict(state["method"])
    return method.backbone
