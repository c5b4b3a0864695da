"""The sweep driver: pool and curation once, the datasets materialised once, then Ray Tune over the trials."""

from __future__ import annotations

import math
import shutil
from typing import Any

from curation.errors import InputError
from pipelines.console import say
from pipelines.config import PipelineConfig, config_to_dict
from pipelines.sweeps.locations import check_sweep_locations, experiment_path, remove_experiment, storage_root, sweep_dir
from pipelines.sweeps.results import SweepResult, write_results
from pipelines.sweeps.space import SweepSpec, trial_config
from pipelines.sweeps.trial import sweep_trial


def _scheduler(spec: SweepSpec) -> Any:
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, PopulationBasedTraining

    s = spec.scheduler
    if s.name == "asha":
        return AsyncHyperBandScheduler(time_attr="epoch", max_t=s.max_t, grace_period=s.grace_period,
                                       reduction_factor=s.reduction_factor, brackets=1)
    if s.name == "pbt":
        return PopulationBasedTraining(
            time_attr="epoch", perturbation_interval=s.perturbation_interval, quantile_fraction=s.quantile_fraction,
            resample_probability=s.resample_probability,
            hyperparam_mutations={k: spec.search[k].to_mutation() for k in s.mutate},
        )
    return FIFOScheduler()


def trial_cpus(cfg: PipelineConfig) -> float:
    """CPUs one trial holds: its in-process worker, or all of its DDP workers."""
    tc = cfg.train
    return tc.cpus_per_worker if tc.num_workers == 0 else tc.num_workers * tc.cpus_per_worker


def _concurrency(cfg: PipelineConfig, spec: SweepSpec) -> int:
    """As many trials as the cluster's CPUs fit (DDP workers are invisible to Tune, so count them here)."""
    import ray

    if spec.max_concurrent:
        return spec.max_concurrent
    cpus = float(ray.cluster_resources().get("CPU", 1))
    return max(1, int(math.floor(cpus / trial_cpus(cfg) + 1e-9)))


def _datasets(cfg: PipelineConfig) -> tuple[Any, Any]:
    """Pool + curation once (resumable), then what every trial trains on and the monitor's sets
    (pipelines/monitor.py: a sample of the labelled evaluation set, a pool sample for label-free metrics).

    The train set follows ``data.cache`` as a single run does: in memory, the curated pool is decoded and
    materialised once for all trials; in stream mode (set, or ``auto`` over ``data.cache_budget_gb``) each
    trial gets the curated shards (a ``ShardPool``) and streams them every epoch, so a sweep never holds a pool
    that does not fit."""
    from pipelines.feed import ShardPool, choose_cache
    from pipelines.monitor import monitor_sets_for_run
    from pipelines.readers import read_decoded
    from pipelines.run import RunDir, run_pipeline

    run_pipeline(cfg, until="curate", resume=True)
    run = RunDir(cfg.run_dir)
    pool, cur = run.record("pool"), run.record("curate")
    if pool is None or cur is None:
        raise InputError(f"{cfg.run_dir}: pool/curate stage records missing after curation; rerun with --overwrite")
    d = cfg.data
    monitor = monitor_sets_for_run(cfg, pool, cur).materialize()
    shard_pool = ShardPool.from_manifest(cur["manifest"], cur["shards"])
    mode, why = choose_cache(d.cache, shard_pool.total, d.image_size, d.channels, d.cache_budget_gb)
    say(f"[sweep] feed: {mode}; {why}")
    if mode == "stream":
        return shard_pool, monitor
    train = read_decoded(cur["shards"], d.image_size, d.channels, d.intensity).select_columns(["image", "label"])
    return train.materialize(), monitor


def _exists(exp_path: str, resume: bool) -> bool:
    """Whether there is a sweep to resume; refuses to silently start over on top of one."""
    from ray import tune

    if not tune.Tuner.can_restore(exp_path):
        return False
    if not resume:
        raise InputError(f"sweep already exists at {exp_path}; pass --resume to continue it (finished trials "
                         f"are kept), --overwrite to start over, or set name: OTHER in the sweep file")
    return True


def _make_tuner(cfg: PipelineConfig, spec: SweepSpec, train_ds: Any, monitor_sets: Any, resume: bool) -> Any:
    from ray import tune

    sdir = sweep_dir(cfg, spec)
    base = config_to_dict(cfg)
    if cfg.train.tracking == "mlflow" and not cfg.train.tracking_uri:  # one MLflow store: trials side by side
        base["train"]["tracking_uri"] = (sdir / "mlruns").as_uri()
    trainable = tune.with_parameters(
        sweep_trial, base=base, trials_dir=str(sdir / "trials"), train_ds=train_ds, monitor_sets=monitor_sets,
        with_checkpoints=spec.scheduler.name == "pbt", metric=spec.metric,
    )
    # in-process trials reserve their CPU in Tune; DDP trials' workers ask Train for theirs
    per_trial = trial_cpus(cfg) if cfg.train.num_workers == 0 else 0.01
    trainable = tune.with_resources(trainable, {"cpu": per_trial})
    root = storage_root(cfg, spec)
    exp_path = experiment_path(cfg, spec)
    if _exists(exp_path, resume):
        say(f"[sweep] resuming {exp_path}")
        return tune.Tuner.restore(exp_path, trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space={k: d.to_tune() for k, d in spec.search.items()},
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, scheduler=_scheduler(spec),
                                    num_samples=spec.num_samples, max_concurrent_trials=_concurrency(cfg, spec)),
        run_config=tune.RunConfig(name=spec.name, storage_path=root, verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


def run_sweep(cfg: PipelineConfig, spec: SweepSpec, *, resume: bool = False, overwrite: bool = False) -> SweepResult:
    """Run (or resume) the sweep; write trials.parquet, best_config.yaml and report.html in the sweep folder."""
    from pipelines.ray_runtime import ensure_ray

    check_sweep_locations(cfg, spec)
    sdir = sweep_dir(cfg, spec)
    if overwrite:
        shutil.rmtree(sdir, ignore_errors=True)
        remove_experiment(experiment_path(cfg, spec))
    _exists(experiment_path(cfg, spec), resume)  # fail before any work when --resume is missing
    for key, domain in spec.search.items():  # the CLI may have overridden the base since load time
        for value in domain.values:
            trial_config(cfg, {key: value})
    ensure_ray(cfg.ray)
    train_ds, monitor_sets = _datasets(cfg)
    say(f"[sweep] {spec.name}: {len(spec.search)} searched key(s), scheduler {spec.scheduler.name}, "
        f"{_concurrency(cfg, spec)} trial(s) at once; results in {sdir}")
    tuner = _make_tuner(cfg, spec, train_ds, monitor_sets, resume)
    grid = tuner.fit()
    return write_results(cfg, spec, grid)
