"""One Tune trial = one pretraining run of the sampled config, restartable, reporting every epoch to Tune.

In-process trials (``train.num_workers=0``) pretrain in a helper Ray task and forward epochs from the
checkpoints it writes (see pipelines/sweeps/__init__.py for why); DDP trials report through Train's callback.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from pipelines.config import PipelineConfig, config_from_dict, config_to_dict
from pipelines.sweeps.space import trial_config


def _append_line(path: Path, record: dict[str, Any]) -> None:
    """One JSON line, appended in a single write so concurrent or killed writers never interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _local_checkpoints(trial_dir: Path, run_name: str) -> Path:
    """Where ``pretrain`` keeps in-process checkpoints (``run_dir/name/local_checkpoints``)."""
    return trial_dir / run_name / "local_checkpoints"


def _seed_from_tune_checkpoint(local_root: Path) -> int:
    """PBT: replace this trial's local checkpoints by the one Tune hands over (maybe another trial's).

    Returns the epoch it holds (0 without one), so epochs up to it are not reported twice.
    """
    from ray import tune

    from pipelines.train_checkpoints import CHECKPOINT_FILE, checkpoint_name, read_state

    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return 0
    with ckpt.as_directory() as d:
        epoch = int(read_state(Path(d) / CHECKPOINT_FILE)["epoch"])
        shutil.rmtree(local_root, ignore_errors=True)
        target = local_root / checkpoint_name(epoch)
        target.mkdir(parents=True)
        shutil.copyfile(Path(d) / CHECKPOINT_FILE, target / CHECKPOINT_FILE)
    return epoch


def _newest_history(local_root: Path, seen: int) -> tuple[int, list[dict[str, Any]], Optional[Path]]:
    """History inside the newest local checkpoint if it is past epoch ``seen`` (it may vanish: pruned)."""
    from pipelines.train_checkpoints import (
        CHECKPOINT_FILE,
        CheckpointRefused,
        checkpoint_epoch,
        local_checkpoint_folders,
        read_state,
    )

    dirs = local_checkpoint_folders(local_root)
    if not dirs or checkpoint_epoch(dirs[-1].name) <= seen:
        return seen, [], None
    try:
        state = read_state(dirs[-1] / CHECKPOINT_FILE)
    except CheckpointRefused:  # pruned by the loop, or caught mid-write: the next look finds a newer one
        return seen, [], None
    return int(state["epoch"]), list(state["history"]), dirs[-1]


def _report_epochs(history: list[dict[str, Any]], after: int, params: dict[str, Any], ckpt_dir: Optional[Path],
                   with_checkpoint: bool, metric: str) -> int:
    """Send epochs past ``after`` to Tune (with a Tune checkpoint on the newest one for PBT). An epoch the
    monitor skipped (``train.knn_monitor_every`` > 1 under fifo) carries the ranking ``metric`` as NaN:
    Tune wants it in every result, and the sweep's table ignores NaN."""
    from ray import tune

    from pipelines.train_checkpoints import CHECKPOINT_FILE

    new = [h for h in history if h["epoch"] > after]
    for i, metrics in enumerate(new):
        out = {metric: float("nan"), **metrics, **{f"param/{k}": v for k, v in params.items()}}
        if with_checkpoint and ckpt_dir is not None and i == len(new) - 1:
            with tempfile.TemporaryDirectory() as tmp:
                try:  # the loop may prune this folder while we copy: then skip this one checkpoint
                    shutil.copyfile(ckpt_dir / CHECKPOINT_FILE, Path(tmp) / CHECKPOINT_FILE)
                except FileNotFoundError:
                    tune.report(out)
                else:
                    tune.report(out, checkpoint=tune.Checkpoint.from_directory(tmp))
        else:
            tune.report(out)
    return max([after] + [h["epoch"] for h in new])


def _exit_when_gone(owner_pid: int, period_s: float = 0.5) -> None:
    """Watchdog for the helper task: end this worker process once the trial that started it has died.

    Ray kills an actor whose owner dies, but not a running task; without this, a trial that ASHA
    stops would keep training in the background and take CPU from the trials still running.
    The task is pinned to the trial's node, so the trial's pid is visible here.
    """
    import threading

    def watch() -> None:
        while True:
            time.sleep(period_s)
            try:
                os.kill(owner_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # alive, owned by someone else (cannot happen for our own trial)
                pass

    threading.Thread(target=watch, name="sslpipe-trial-watchdog", daemon=True).start()


def _pretrain_task():
    """A Ray task (not an actor) so that later trials reuse a worker that has torch imported already."""
    import ray

    @ray.remote(num_cpus=0)
    def run_pretrain(cfg_dict: dict[str, Any], train_ds: Any, monitor_sets: Any, trial_dir: str, name: str,
                     owner_pid: int) -> list:
        from pipelines.pretrain import pretrain

        _exit_when_gone(owner_pid)
        return pretrain(config_from_dict(cfg_dict), train_ds, trial_dir, monitor_sets, name=name).history

    return run_pretrain


def _train_in_helper(cfg: PipelineConfig, train_ds: Any, monitor_sets: Any, trial_dir: Path, run_name: str,
                    params: dict[str, Any], with_checkpoints: bool, metric: str) -> int:
    """In-process trial: pretrain in a helper task on this node; forward epochs as checkpoints appear."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    local_root = _local_checkpoints(trial_dir, run_name)
    reported = _seed_from_tune_checkpoint(local_root) if with_checkpoints else 0
    pending = _pretrain_task().options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False),
        max_retries=0,
    ).remote(config_to_dict(cfg), train_ds, monitor_sets, str(trial_dir), run_name, os.getpid())
    seen = 0
    try:
        while True:
            done, _ = ray.wait([pending], timeout=0.5)
            seen, history, ckpt_dir = _newest_history(local_root, seen)
            if history:
                reported = _report_epochs(history, reported, params, ckpt_dir, with_checkpoints, metric)
            if done:
                break
    except BaseException:  # Tune stops a trial by raising SystemExit in report(): stop the helper too
        ray.cancel(pending, force=True)
        raise
    history = ray.get(pending)  # raises the trial's own error, if any
    _, _, ckpt_dir = _newest_history(local_root, 0)
    return _report_epochs(history, reported, params, ckpt_dir, with_checkpoints, metric)


def _train_with_ray_train(cfg: PipelineConfig, train_ds: Any, monitor_sets: Any, trial_dir: Path, run_name: str,
                          metric: str) -> int:
    """DDP trial: the supported Train V2 + Tune pattern; rank 0's metrics reach Tune through the callback."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.pretrain import pretrain

    class ReportWithMetric(TuneReportCallback):
        """Tune's callback, with the ranking metric as NaN on epochs the monitor skipped (see _report_epochs)."""

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            super().after_report(run_context, [{metric: float("nan"), **m} for m in metrics], checkpoint)

    result = pretrain(cfg, train_ds, trial_dir, monitor_sets, name=run_name, callbacks=[ReportWithMetric()])
    return int(result.history[-1]["epoch"]) if result.history else 0


def _finished_history(trial_dir: Path) -> Optional[list[dict[str, Any]]]:
    """The metric history of a trial that already ran to its end (marker + final checkpoint), else None."""
    from pipelines.train_checkpoints import read_state

    final = trial_dir / "checkpoint.pt"
    if not (trial_dir / "finished.jsonl").exists() or not final.exists():
        return None
    return list(read_state(final)["history"])


def sweep_trial(params: dict[str, Any], *, base: dict[str, Any], trials_dir: str, train_ds: Any, monitor_sets: Any,
                with_checkpoints: bool, metric: str = "knn_top1") -> None:
    """The Tune function trainable: one trial = one pretraining run of the sampled config."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(base, params)
    trial_dir = Path(trials_dir) / trial_id
    finished = _finished_history(trial_dir)
    if finished is not None:
        # the driver died after this trial finished but before Tune saved that: hand back its results, don't retrain
        _append_line(trial_dir / "replays.jsonl", {"time": time.time(), "pid": os.getpid()})
        _report_epochs(finished, 0, params, None, False, metric)
        return
    # one line per (re)start: proves on resume that finished trials were not run again
    _append_line(trial_dir / "starts.jsonl", {"time": time.time(), "pid": os.getpid(), "params": params})
    if cfg.train.num_workers == 0:
        last = _train_in_helper(cfg, train_ds, monitor_sets, trial_dir, trial_id, params, with_checkpoints, metric)
    else:
        last = _train_with_ray_train(cfg, train_ds, monitor_sets, trial_dir, trial_id, metric)
    _append_line(trial_dir / "finished.jsonl", {"time": time.time(), "epoch": last})
