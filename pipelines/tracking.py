"""Live run tracking: every finished epoch reaches disk (and TensorBoard or MLflow) while training runs.

Rank 0 of the Ray Train loop owns one ``RunTracker``; the other ranks get a ``NoTracker``.

* ``RUN_DIR/metrics.jsonl`` holds one JSON line per finished epoch. It is rewritten whole, atomically,
  from the tracker's copy of the history at every epoch (and once at the start). A rewrite works on
  object stores, which cannot append, and makes a resumed run exact: the history travels inside the
  checkpoint, so a run restarted from epoch 4 after dying in epoch 6 rewrites epochs 1-4 and goes on;
  lines of epochs after the checkpoint never stay behind twice.
* ``train.tracking=tensorboard`` (the default; tensorboardX ships with Ray Tune) writes the same scalars,
  under the same names, to event files in ``RUN_DIR/tb`` against the optimizer step. A resumed writer
  purges the steps after its checkpoint, so TensorBoard draws the rerun, not both.
  ``tensorboard --logdir RUN_DIR/tb`` shows a run; a sweep's trials each have their own
  ``TRIAL_DIR/tb`` (``tensorboard --logdir RUN_DIR/sweeps/NAME/trials`` compares them).
* ``train.tracking=mlflow`` logs the flattened config as params and the scalars per step to an MLflow run
  through the client (``MlflowClient``), found again by a tag on resume, so one training run is one MLflow
  run however often it restarts. Ray's ``setup_mlflow`` would start a new MLflow run on every restart
  and keeps a process-global active run, which outlives a trial in a reused Ray worker.
  ``train.tracking_uri`` empty means a file store in ``RUN_DIR/mlruns``; MLflow 3 keeps that backend in
  maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is set, which we set for our own
  default store only (a database store needs the full ``mlflow`` package: ``sqlite:///mlflow.db``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Optional, Protocol

import storage

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tb"
MLFLOW_DIR = "mlruns"
#: the client each tracker needs, and how to install it
CLIENTS = {"tensorboard": ("tensorboardX", "pip install tensorboardX"),
           "mlflow": ("mlflow", "pip install mlflow-skinny")}
#: per-epoch keys that are the x axis or bookkeeping, not curves
NOT_SCALARS = ("epoch", "step")
#: MLflow takes at most 100 params and 1000 metrics per batch call
MLFLOW_PARAM_BATCH, MLFLOW_METRIC_BATCH = 100, 1000


def missing_client(tracking: str) -> Optional[str]:
    """None if ``tracking``'s client library is importable, else what to install (checked at config load)."""
    module, install = CLIENTS.get(tracking, (None, ""))
    if module is None or importlib.util.find_spec(module) is not None:
        return None
    return f"{tracking} needs the {module} package ({install}); or set train.tracking=none"


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric values of one epoch's metrics, by the same names as in metrics.jsonl."""
    return {k: float(v) for k, v in metrics.items()
            if k not in NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def write_metrics(history: list[dict[str, Any]], run_dir: str | Path) -> str:
    """``RUN_DIR/metrics.jsonl``: one line per epoch of ``history``, written atomically (temp + rename
    locally, one PUT on an object store)."""
    return storage.write_text(storage.join(run_dir, METRICS_FILE), "".join(json.dumps(h) + "\n" for h in history))


def mirror_folder(local: Path, location: str) -> None:
    """Copy every file under the local folder ``local`` to the same relative path under ``location``
    (a uri): TensorBoard and MLflow's file store write local files only, so a run directory in a
    bucket gets their folders copied after each epoch."""
    for path in sorted(local.rglob("*")):
        if path.is_file():
            storage.put_file(path, storage.join(location, *path.relative_to(local).parts))


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": "0.1"}``: a config as MLflow params."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = str(value)[:6000]  # MLflow's limit on a param value
    return flat


class Backend(Protocol):
    """Where the scalars of each epoch go besides metrics.jsonl."""

    def log(self, values: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardBackend:
    """Event files in ``logdir``, written and flushed synchronously at each epoch.

    tensorboardX's ``SummaryWriter`` queues events for a background thread that writes them out every
    ``flush_secs`` (its ``flush`` does not wait for that queue), so an epoch could stay invisible for two
    minutes, and a trial that ASHA stops (its process killed) lost its last epochs. tensorboardX's own
    ``EventsWriter`` writes each event to the file in this thread.
    """

    def __init__(self, logdir: str, resumed_step: int) -> None:
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        os.makedirs(logdir, exist_ok=True)
        self.events = EventsWriter(os.path.join(logdir, "events"))
        if resumed_step:  # TensorBoard drops the earlier run's events from this step on (it died after its checkpoint)
            self.events.write_event(Event(wall_time=time.time(), step=resumed_step + 1,
                                          session_log=SessionLog(status=SessionLog.START)))
        self.events.flush()

    def log(self, values: dict[str, float], step: int) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=name, simple_value=value) for name, value in values.items()])
        self.events.write_event(Event(wall_time=time.time(), step=step, summary=summary))
        self.events.flush()

    def close(self) -> None:
        self.events.close()


class MLflowBackend:
    """One MLflow run per training run (``run_key``), continued on resume; the config as its params."""

    def __init__(self, uri: str, experiment: str, run_name: str, run_key: str, params: dict[str, str]) -> None:
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # our local default store (see module doc)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        tag = hashlib.sha256(run_key.encode()).hexdigest()[:32]  # a path may hold quotes; a digest never does
        earlier = self.client.search_runs([experiment_id], filter_string=f"tags.`sslpipe.run` = '{tag}'",
                                          max_results=1, order_by=["attributes.start_time DESC"])
        if earlier:
            self.run_id = earlier[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(experiment_id, run_name=run_name, tags={"sslpipe.run": tag,
                                                                                "sslpipe.run_dir": run_key})
            self.run_id = run.info.run_id
            items = [Param(k, v) for k, v in params.items()]
            for i in range(0, len(items), MLFLOW_PARAM_BATCH):
                self.client.log_batch(self.run_id, params=items[i : i + MLFLOW_PARAM_BATCH])

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(items), MLFLOW_METRIC_BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + MLFLOW_METRIC_BATCH])

    def close(self) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED")


class RunTracker:
    """Rank 0's tracker: metrics.jsonl plus an optional backend, fed one epoch at a time."""

    def __init__(self, run_dir: str | Path, history: list[dict[str, Any]], backend: Optional[Backend],
                 mirrors: Optional[list[tuple[Path, str]]] = None) -> None:
        self.run_dir = run_dir
        self.history = [dict(h) for h in history]  # its own copy: the loop's list is the checkpoint's
        self.backend = backend
        self.mirrors = mirrors or []  # (local folder, its place in a bucket run directory)
        write_metrics(self.history, run_dir)  # a resumed run drops lines past its checkpoint right away

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        """Record one finished epoch: rewrite metrics.jsonl, then send its scalars to the backend."""
        self.history.append(dict(metrics))
        write_metrics(self.history, self.run_dir)
        if self.backend is not None:
            # a NaN loss is worth a point on the curve (divergence); other NaNs mean "not measured"
            # (no kNN monitor), which would only draw an empty curve
            values = {k: v for k, v in scalars(metrics).items() if math.isfinite(v) or k == "loss"}
            self.backend.log(values, int(metrics.get("step", len(self.history))))
        self._mirror()

    def _mirror(self) -> None:
        for local, location in self.mirrors:
            mirror_folder(local, location)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
        self._mirror()


class NoTracker:
    """What ranks other than 0 hold: they compute the same epochs, rank 0 records them."""

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def open_tracker(cfg: Any, loop_config: dict[str, Any], rank: int,
                 history: list[dict[str, Any]]) -> RunTracker | NoTracker:
    """The tracker of this Ray Train worker: rank 0 of a run that knows its run directory tracks.

    ``history`` is what the checkpoint carried (empty on a fresh start); ``loop_config["run_dir"]`` is
    the Train run's directory (a sweep trial's own folder). ``train.tracking_uri`` empty puts the MLflow
    store in that directory (a sweep points all its trials at one store instead). The MLflow run is
    named after the Train run (``pretrain``, or the sweep's trial id).
    """
    run_dir = loop_config.get("run_dir")
    if rank != 0 or not run_dir:
        return NoTracker()
    import ray.train

    run_name = ray.train.get_context().get_experiment_name()
    tc = cfg.train
    resumed_step = int(history[-1]["step"]) if history else 0
    backend: Optional[Backend] = None
    mirrors: list[tuple[Path, str]] = []

    def local_folder(name: str) -> Path:
        """``RUN_DIR/name``, or for a run directory in a bucket a local scratch folder copied there each epoch."""
        location = storage.join(run_dir, name)
        folder = storage.scratch_dir(location)
        if storage.is_uri(run_dir):
            mirrors.append((folder, location))
        return folder

    if tc.tracking == "tensorboard":
        backend = TensorBoardBackend(str(local_folder(TENSORBOARD_DIR)), resumed_step)
    elif tc.tracking == "mlflow":
        from pipelines.config import config_to_dict

        uri = tc.tracking_uri or local_folder(MLFLOW_DIR).resolve().as_uri()
        backend = MLflowBackend(uri, tc.tracking_experiment, run_name, f"{run_dir}#{run_name}",
                                flatten(config_to_dict(cfg)))
    return RunTracker(run_dir, history, backend, mirrors)
