"""Live tracking: metrics.jsonl grows while training runs, TensorBoard and MLflow get the same scalars,
and a resumed run neither duplicates nor keeps lines past its checkpoint."""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest

from pipelines.config import ConfigError, load_config
from pipelines.monitor import MonitorSets
from pipelines.pretrain import pretrain
from pipelines.tracking import METRICS_FILE, TENSORBOARD_DIR, scalars

try:
    from ray.train import UserCallback
except ImportError:  # pragma: no cover - Train V1 only
    UserCallback = object


def small_config(run_dir: Path, epochs: int, workers: int = 0, *extra: str):
    return load_config(None, [
        f"run_dir={run_dir}", f"train.num_workers={workers}", f"train.epochs={epochs}", "train.batch_size=64",
        "train.warmup_epochs=0", "backbone.width=8", "method.proj_hidden_dim=32", "method.proj_dim=16",
        "train.cpus_per_worker=1.0", *extra,
    ])


@pytest.fixture(scope="module")
def digits(ray_session, mnist_digits):
    images, labels = mnist_digits
    return ray_session.data.from_items([{"image": images[i][:, :, None], "label": int(labels[i])} for i in range(256)])


@pytest.fixture(scope="module")
def heldout(ray_session, mnist_digits):
    images, labels = mnist_digits
    return ray_session.data.from_items([{"image": images[i][:, :, None], "label": int(labels[i])}
                                        for i in range(4000, 4200)])


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]


def read_events(logdir: Path) -> list[Any]:
    """Every event in the TensorBoard files under ``logdir``, oldest file first (TFRecord framing:
    u64 length, u32 crc, payload, u32 crc), decoded with the protobuf classes tensorboardX ships."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(logdir.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            events.append(Event.FromString(data[at + 12 : at + 12 + length]))
            at += 12 + length + 4
    return events


def scalar_curves(logdir: Path) -> dict[str, dict[int, float]]:
    curves: dict[str, dict[int, float]] = {}
    for event in read_events(logdir):
        for value in event.summary.value:
            curves.setdefault(value.tag, {})[event.step] = value.simple_value
    return curves


def assert_same_scalars(curves: dict[str, dict[int, float]], history: list[dict[str, Any]]) -> None:
    """Each finite scalar of each epoch appears under its metrics.jsonl name at that epoch's step."""
    assert history
    for epoch in history:
        for name, value in scalars(epoch).items():
            if math.isfinite(value):
                assert curves[name][epoch["step"]] == pytest.approx(value, rel=1e-6), (name, epoch["epoch"])
    assert {"loss", "lr", "images_per_s", "knn_top1"} <= set(curves)


class MetricsFileWatcher(UserCallback):
    """Runs in the Ray Train controller: after each epoch's report, notes which epochs metrics.jsonl holds."""

    def __init__(self, run_dir: str, notes: str) -> None:
        self.run_dir, self.notes = Path(run_dir), Path(notes)

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        path = self.run_dir / METRICS_FILE
        lines = path.read_text().splitlines() if path.exists() else []
        tb = self.run_dir / TENSORBOARD_DIR
        note = {"reported": metrics[0]["epoch"], "epochs_in_file": [json.loads(line)["epoch"] for line in lines],
                "tensorboard_steps": sorted(scalar_curves(tb).get("loss", {})) if tb.exists() else []}
        with self.notes.open("a") as f:
            f.write(json.dumps(note) + "\n")


def test_metrics_jsonl_grows_by_one_line_per_epoch_while_ray_train_runs(digits, heldout, tmp_path: Path) -> None:
    run_dir, notes, epochs = tmp_path / "run", tmp_path / "notes.jsonl", 4
    cfg = small_config(run_dir, epochs=epochs, workers=1)
    result = pretrain(cfg, digits, run_dir, monitor=MonitorSets(bank=digits, queries=heldout),
                      callbacks=[MetricsFileWatcher(str(run_dir), str(notes))])

    seen = [json.loads(line) for line in notes.read_text().splitlines()]
    assert [s["reported"] for s in seen] == list(range(1, epochs + 1))
    # A Train V2 worker queues at most one report ahead of the controller (a queue of size 1), so while
    # the callback handles epoch k the worker has finished at most epoch k + 2 and is still training:
    # the file must already hold epochs 1..k, one line each, and (for k + 2 < 4) not yet the last one.
    for s in seen:
        k, in_file = s["reported"], s["epochs_in_file"]
        assert in_file == list(range(1, len(in_file) + 1)) and k <= len(in_file) <= min(k + 2, epochs), s
        assert len(s["tensorboard_steps"]) >= k, s  # the event file has epoch k on disk too, not in a queue
    assert len(seen[0]["epochs_in_file"]) < epochs, "metrics.jsonl was complete before training could have ended"
    assert read_metrics(run_dir) == result.history
    # TensorBoard's event files hold the same scalars, against the optimizer step
    assert_same_scalars(scalar_curves(run_dir / TENSORBOARD_DIR), result.history)


def test_a_resumed_run_rewrites_metrics_to_its_checkpoint_without_duplicates(digits, tmp_path: Path) -> None:
    cfg = small_config(tmp_path, 3, 0, "train.checkpoint_every_epochs=2", "train.knn_monitor_every=0")
    first = pretrain(cfg, digits, tmp_path)
    assert [h["epoch"] for h in read_metrics(tmp_path)] == [1, 2, 3]
    # the run "died" after epoch 3 was logged but before its checkpoint was saved: it resumes from epoch 2
    shutil.rmtree(tmp_path / "pretrain" / "local_checkpoints" / "epoch_000003")
    second = pretrain(cfg, digits, tmp_path)

    rows = read_metrics(tmp_path)
    assert [h["epoch"] for h in rows] == [1, 2, 3]  # epoch 3 once, from the rerun
    assert rows[:2] == first.history[:2] and rows == second.history and rows[2]["resumes"] == 1
    # the rerun's event file tells TensorBoard to drop the dead run's steps after the checkpoint
    resumed_step = first.history[1]["step"]
    purges = [e.step for e in read_events(tmp_path / TENSORBOARD_DIR) if e.HasField("session_log")]
    assert purges == [resumed_step + 1]
    assert scalar_curves(tmp_path / TENSORBOARD_DIR)["loss"][rows[2]["step"]] == pytest.approx(rows[2]["loss"])


def test_tracking_none_writes_metrics_but_no_event_files(digits, tmp_path: Path) -> None:
    pretrain(small_config(tmp_path, 1, 0, "train.tracking=none", "train.knn_monitor_every=0"), digits, tmp_path)
    assert [h["epoch"] for h in read_metrics(tmp_path)] == [1]
    assert not (tmp_path / TENSORBOARD_DIR).exists()


def test_mlflow_file_store_gets_the_params_and_every_epoch_once_across_a_resume(digits, heldout, tmp_path: Path,
                                                                                monkeypatch) -> None:
    pytest.importorskip("mlflow", reason="MLflow client not installed (pip install mlflow-skinny)")
    from mlflow.tracking import MlflowClient

    tracking = ["train.tracking=mlflow", "train.tracking_experiment=watch"]
    monitor = MonitorSets(bank=digits, queries=heldout)
    first = pretrain(small_config(tmp_path, 2, 0, *tracking), digits, tmp_path, monitor=monitor)
    second = pretrain(small_config(tmp_path, 3, 0, *tracking), digits, tmp_path, monitor=monitor)
    assert second.history[:2] == first.history

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for this reader too (MLflow 3 refuses file stores)
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("watch")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, "a resumed run must continue its MLflow run, not start another"
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "pretrain"
    assert run.data.params["train.epochs"] == "2" and run.data.params["method.name"] == "simclr"
    for name in ("loss", "knn_top1", "lr", "images_per_s"):
        logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)}
        assert logged == {h["step"]: pytest.approx(h[name]) for h in second.history}, name


def test_tracking_settings_are_checked_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.tracking': got 'wandb', must be one of 'tensorboard', 'mlflow', 'none'"):
        small_config(tmp_path, 1, 0, "train.tracking=wandb")
    with pytest.raises(ConfigError, match="train.tracking_uri.*train.tracking=mlflow"):
        small_config(tmp_path, 1, 0, "train.tracking_uri=http://127.0.0.1:5000")
