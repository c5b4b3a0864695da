"""Sweeps: the search-space format fails early and clearly; a real Tune sweep on the MNIST digits shows kNN
varying with temperature and ASHA stopping trials; a killed sweep resumes without re-running finished trials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.config import ConfigError, load_config
from pipelines.sweep import (
    SweepSpec,
    build_sweep_report,
    experiment_path,
    load_search_space,
    parse_search_space,
    run_sweep,
    sweep_dir,
    trial_config,
)

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs" / "sweep_demo.yaml"


def spec_from(tmp_path: Path, text: str) -> SweepSpec:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return load_search_space(path)


# --------------------------------------------------------------------------- format and validation (no Ray)


def test_demo_sweep_file_loads_with_grid_and_scheduler() -> None:
    spec = load_search_space(DEMO)
    assert spec.search["method.temperature"].kind == "grid"
    assert spec.search["method.temperature"].values == [0.05, 0.1, 0.2, 0.5, 1.0]
    assert spec.scheduler.name == "asha" and spec.scheduler.max_t == spec.base.train.epochs
    assert spec.base.train.num_workers == 0 and spec.base.backbone.width == 8  # overrides applied to demo.yaml
    assert spec.metric == "knn_top1"


def test_all_domain_kinds_and_inline_base(tmp_path: Path) -> None:
    spec = spec_from(tmp_path, """
config: {train: {epochs: 4}}
overrides: ["train.num_workers=0"]
search:
  method.temperature: {loguniform: [0.05, 1.0]}
  augment.jitter_strength: {uniform: [0.2, 1.0]}
  augment.crop_scale_min: {choice: [0.2, 0.4]}
  train.lr: {loguniform: [1.0e-4, 1.0e-2]}
  backbone.width: {randint: [8, 16]}
  method.name: {grid: [simclr]}
scheduler: {name: pbt, perturbation_interval: 2, mutate: [method.temperature]}
num_samples: 3
""")
    from ray import tune

    assert spec.base.train.epochs == 4 and spec.num_samples == 3
    assert isinstance(spec.search["train.lr"].to_tune(), tune.search.sample.Float)
    assert spec.search["method.name"].to_tune() == {"grid_search": ["simclr"]}
    assert spec.scheduler.mutate == ["method.temperature"]
    cfg = trial_config(spec.base, {"method.temperature": 0.3, "augment.crop_scale_min": 0.2, "backbone.width": 12})
    assert (cfg.method.temperature, cfg.augment.crop_scale_min, cfg.backbone.width) == (0.3, 0.2, 12)


@pytest.mark.parametrize("search, message", [
    ("{method.temprature: {grid: [0.1]}}", "'method.temprature': is not a config key"),
    ("{method.temperature: {grid: [0.1, 0.0]}}", "'method.temperature': value 0.0 is not allowed"),
    ("{method.temperature: {loguniform: [0.0, 1.0]}}", "loguniform needs positive bounds"),
    ("{train.lr: {uniform: [0.1, 0.01]}}", "not increasing"),
    ("{method.name: {grid: [byol_typo]}}", "'method.name': value 'byol_typo' is not allowed"),
    ("{augment.jitter_strength: {normal: [0, 1]}}", "write one of"),
    ("{backbone.width: {uniform: [8, 16]}}", "'backbone.width': value 8.0"),  # ints need randint: caught at load
])
def test_bad_search_space_fails_at_load_naming_the_key(tmp_path: Path, search: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        spec_from(tmp_path, f"config: {{train: {{num_workers: 0}}}}\nsearch: {search}\n")


@pytest.mark.parametrize("extra, message", [
    ("metric: loss", "rank by knn_top1"),
    ("scheduler: {name: hyperband}", "'scheduler.name'"),
    ("scheduler: {name: asha, grace_period: 9}", "'scheduler.grace_period'"),
    ("scheduler: {name: asha, max_t: 50}", "'scheduler.max_t'"),
    ("scheduler: {name: asha, patience: 2}", "'scheduler.patience'"),
    ("searchh: {}", "'searchh': is not a sweep setting"),
])
def test_bad_sweep_settings_name_the_key(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        spec_from(tmp_path, f"config: {{train: {{num_workers: 0, epochs: 5}}}}\n"
                            f"search: {{method.temperature: {{grid: [0.1]}}}}\n{extra}\n")


def test_pbt_requires_in_process_trials_and_knn_every_epoch(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.num_workers: 0"):
        spec_from(tmp_path, "config: {train: {num_workers: 2}}\nsearch: {method.temperature: {grid: [0.1]}}\n"
                            "scheduler: pbt\n")
    with pytest.raises(ConfigError, match="'train.knn_monitor_every'"):
        spec_from(tmp_path, "config: {train: {knn_monitor_every: 2}}\nsearch: {method.temperature: {grid: [0.1]}}\n")
    # fifo reads only the last epoch, which the monitor always scores; off (0) is still refused
    spec_from(tmp_path, "config: {train: {knn_monitor_every: 2}}\nsearch: {method.temperature: {grid: [0.1]}}\n"
                        "scheduler: fifo\n")
    with pytest.raises(ConfigError, match="'train.knn_monitor_every'"):
        spec_from(tmp_path, "config: {train: {knn_monitor_every: 0}}\nsearch: {method.temperature: {grid: [0.1]}}\n"
                            "scheduler: fifo\n")


def test_report_is_self_contained_with_both_plots() -> None:
    spec = parse_search_space({"config": {"train": {"epochs": 3}}, "search": {
        "method.temperature": {"grid": [0.1, 0.5]}}}, REPO)
    rows = [
        {"trial_id": "a", "status": "completed", "method.temperature": 0.1, "knn_top1": 0.8, "knn_top1_best": 0.8,
         "epochs": 3, "loss_last": 3.0, "starts": 1,
         "curve": json.dumps([{"epoch": e, "knn_top1": 0.6 + 0.1 * e} for e in (1, 2, 3)])},
        {"trial_id": "b", "status": "stopped_early", "method.temperature": 0.5, "knn_top1": 0.5, "knn_top1_best": 0.5,
         "epochs": 1, "loss_last": 4.0, "starts": 1, "curve": json.dumps([{"epoch": 1, "knn_top1": 0.5}])},
    ]
    page = build_sweep_report(spec, rows, rows[0])
    assert page.count('src="data:image/png;base64,') == 2
    assert "stopped_early" in page and "0.8000" in page
    assert "src=\"http" not in page and "<link" not in page


SECRET = "wJalrXUtnFEMI0K7MDENG0bPxRfiCYSECRET"


@pytest.mark.parametrize("storage_path", [f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@sweep-bucket/sweeps",
                                          f"s3://sweep-bucket/sweeps?access_key=AKIAIOSFODNN7EXAMPLE&secret_key={SECRET}",
                                          f"minio://AKIAIOSFODNN7EXAMPLE:{SECRET}@127.0.0.1:9/sweeps"])
def test_sweep_main_prints_one_masked_line_for_a_credential_in_a_uri(tmp_path: Path, storage_path: str) -> None:
    """``python -m pipelines.sweep`` goes through the CLI's user-message path: a bad storage_path is one line
    naming the setting, the secret masked, exit code 2; no traceback, nothing started."""
    sweep_file = tmp_path / "creds_sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "base": str(REPO / "configs" / "demo.yaml"), "storage_path": storage_path, "metric": "rankme",
        "search": {"method.temperature": {"grid": [0.1, 0.2]}}}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "pipelines.sweep", str(sweep_file), f"run_dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert SECRET not in out, out
    assert proc.returncode == 2, out
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sslpipe: error:"), out
    assert "storage_path" in lines[0] and "***" in lines[0] and "AWS_SECRET_ACCESS_KEY" in lines[0], out
    assert not (tmp_path / "run").exists()  # refused at load: no run or sweep folder made


# --------------------------------------------------------------------------- real sweeps (Ray Tune + Train)

SMALL = [
    "data.limit=400", "data.demo_holdout=200", "pool.exact_duplicates=20", "pool.near_duplicates=10",
    "pool.blank=4", "pool.noise=4", "pool.corrupt=2", "train.epochs=3",
]


@pytest.fixture(scope="module")
def curated_run(ray_session, tmp_path_factory) -> Path:
    """One curated demo pool shared by the sweeps below (a sweep reuses pool + curate stages)."""
    from pipelines.run import run_pipeline

    run_dir = tmp_path_factory.mktemp("sweep_run")
    spec = load_search_space(DEMO, [f"run_dir={run_dir}", *SMALL])
    run_pipeline(spec.base, until="curate", resume=True)
    # a curation-only job gets its report too: counts per reason and the removed-duplicates grid
    html = (run_dir / "report.html").read_text()
    assert "Curation" in html and "Pretraining" not in html and html.count("data:image/png;base64,") >= 1
    return run_dir


@pytest.mark.slow
def test_temperature_sweep_knn_varies_and_asha_stops_early(curated_run: Path) -> None:
    spec = load_search_space(DEMO, [f"run_dir={curated_run}", *SMALL])
    spec.max_concurrent = 2  # 2 physical cores here; the default fits the 4 logical CPUs
    result = run_sweep(spec.base, spec, resume=False)

    table = pq.read_table(result.table_path).to_pylist()
    assert sorted(r["method.temperature"] for r in table) == [0.05, 0.1, 0.2, 0.5, 1.0]
    assert all(r["status"] != "error" for r in table), [r["error"] for r in table]
    # every trial reported online kNN after epoch 1; it must depend on the temperature
    first_epoch = {r["method.temperature"]: json.loads(r["curve"])[0]["knn_top1"] for r in table}
    assert all(0.2 < v <= 1.0 for v in first_epoch.values()), first_epoch
    assert max(first_epoch.values()) - min(first_epoch.values()) >= 0.01, first_epoch
    # ASHA stopped at least one weak trial before the last epoch, and let at least one finish
    statuses = {r["status"] for r in table}
    assert "stopped_early" in statuses and "completed" in statuses, table
    assert any(r["epochs"] < spec.base.train.epochs for r in table)
    # best = the highest final kNN, and its config is ready for `sslpipe run`
    assert result.best["knn_top1"] == max(r["knn_top1"] for r in table)
    best_cfg = load_config(result.best_config_path)
    assert best_cfg.method.temperature == result.best["method.temperature"]
    assert best_cfg.train.epochs == spec.base.train.epochs
    page = result.report_path.read_text()
    assert page.count("data:image/png;base64,") == 2
    # every trial has its own live TensorBoard curves (tensorboard --logdir SWEEP/trials compares them)
    from tests.test_tracking import scalar_curves

    for r in table:
        curve = {c["epoch"]: c["knn_top1"] for c in json.loads(r["curve"])}
        knn = scalar_curves(result.sweep_dir / "trials" / r["trial_id"] / "tb")["knn_top1"]
        # a trial that ASHA stops may have logged one more epoch than Tune took from it
        assert len(knn) >= len(curve) and all(any(abs(v - t) < 1e-6 for t in knn.values()) for v in curve.values())


def _finished_trials(trials: Path) -> set[str]:
    return {p.parent.name for p in trials.glob("*/finished.jsonl")}


def _tune_saved_a_finished_trial(experiment: Path) -> bool:
    """Tune's newest experiment state records a TERMINATED trial (only the finished one can be: fifo, 1 at once)."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    try:
        return bool(states) and "TERMINATED" in states[-1].read_text()
    except FileNotFoundError:  # replaced while we read it
        return False


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_trials(curated_run: Path, ray_session) -> None:
    sweep_file = curated_run / "resume_sweep.yaml"
    data = yaml.safe_load(DEMO.read_text())
    data["base"] = str(REPO / "configs" / "demo.yaml")
    data.update(name="resume", max_concurrent=1, scheduler={"name": "fifo"},
                search={"method.temperature": {"grid": [0.1, 0.5, 1.0]}})
    sweep_file.write_text(yaml.safe_dump(data))
    overrides = [f"run_dir={curated_run}", *SMALL]
    spec = load_search_space(sweep_file, overrides)
    trials = sweep_dir(spec.base, spec) / "trials"

    # the driver joins this session's Ray cluster, so killing it ends its trials but not the cluster
    address = ray_session.get_runtime_context().gcs_address
    experiment = Path(experiment_path(spec.base, spec))
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}  # Tune saves its state every second
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.sweep", str(sweep_file), *overrides,
                             "--address", address], cwd=REPO, start_new_session=True, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    try:  # kill once a trial has finished and Tune has saved that
        while time.time() < deadline and proc.poll() is None and not (
                _finished_trials(trials) and _tune_saved_a_finished_trial(experiment)):
            time.sleep(0.5)
        finished_before = _finished_trials(trials)
        assert finished_before, "no trial finished before the deadline (or the driver exited early)"
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # our own child's process group
        proc.wait()
    starts_before = {t.name: len((t / "starts.jsonl").read_text().splitlines()) for t in trials.iterdir()}
    assert all(starts_before[t] == 1 for t in finished_before)

    result = run_sweep(spec.base, spec, resume=True)
    table = {r["trial_id"]: r for r in pq.read_table(result.table_path).to_pylist()}
    assert len(table) == 3 and all(r["status"] == "completed" for r in table.values()), table
    assert finished_before <= set(table), "resume started a new sweep instead of continuing the old one"
    for trial_id in finished_before:  # not trained again: still exactly one start each
        assert len((trials / trial_id / "starts.jsonl").read_text().splitlines()) == 1
        assert table[trial_id]["starts"] == 1
        assert not (trials / trial_id / "replays.jsonl").exists()  # Tune itself skipped it
        assert len(json.loads(table[trial_id]["curve"])) == spec.base.train.epochs
    for trial_id in set(starts_before) - finished_before:  # interrupted mid-run: started again, ran to the end
        assert table[trial_id]["starts"] == 2
        assert [c["epoch"] for c in json.loads(table[trial_id]["curve"])] == [1, 2, 3]
    assert sorted(r["method.temperature"] for r in table.values()) == [0.1, 0.5, 1.0]

    with pytest.raises(Exception, match="--resume"):  # a second run without --resume refuses to start over
        run_sweep(spec.base, spec, resume=False)


@pytest.mark.slow
def test_a_stream_mode_sweep_streams_the_curated_shards_in_every_trial(curated_run: Path, capsys) -> None:
    """``data.cache=stream`` holds for sweeps too: each trial reads the curated shards every epoch (its
    recorded keys are curated samples, one global batch per step), and no trial gets a decoded copy."""
    sweep_file = curated_run / "stream_sweep.yaml"
    data = yaml.safe_load(DEMO.read_text())
    data["base"] = str(REPO / "configs" / "demo.yaml")
    data.update(name="stream", max_concurrent=1, scheduler={"name": "fifo"},
                search={"method.temperature": {"grid": [0.1, 0.5]}})
    sweep_file.write_text(yaml.safe_dump(data))
    spec = load_search_space(sweep_file, [f"run_dir={curated_run}", *SMALL, "train.epochs=1", "data.cache=stream",
                                          "train.record_seen_keys=true"])
    result = run_sweep(spec.base, spec, resume=False)
    assert "[sweep] feed: stream; data.cache=stream as configured" in capsys.readouterr().out
    table = pq.read_table(result.table_path).to_pylist()
    assert len(table) == 2 and all(r["status"] == "completed" for r in table), [r.get("error") for r in table]
    manifest = pq.read_table(curated_run / "curated" / "manifest.parquet").to_pydict()
    curated = {k for k, kept in zip(manifest["key"], manifest["kept"]) if kept}
    batch = spec.base.train.batch_size
    for r in table:
        seen = pq.read_table(result.sweep_dir / "trials" / r["trial_id"] / "seen_keys" /
                             "epoch_000001_rank_0.parquet").to_pydict()
        assert "key" in seen, "the trial trained from a decoded copy, not from the shards"
        assert set(seen["key"]) <= curated and len(seen["key"]) == (len(curated) // batch) * batch
