"""``sslpipe sweep``: Ray Tune over any config key, ranked by online kNN, resumable.

Why it is built this way (Ray 2.60, Train V2):

* ``Tuner(TorchTrainer(...))`` no longer works; each Tune trial is a *function*
  that builds and fits its own TorchTrainer (``pipelines.pretrain.pretrain``)
  with ``TuneReportCallback`` in the Train RunConfig and the Tune trial id as
  the Train run name, so a restarted trial resumes from its own checkpoint.
* In-process Train (``train.num_workers=0``) cannot run inside a Tune trial:
  Train V2's local mode refuses ``ray.train.*`` calls in a Tune session, and it
  never calls Train callbacks, so ``TuneReportCallback`` would see nothing. Such
  trials therefore run ``pretrain`` in a helper Ray task (a process without a
  Tune session, pinned to the trial's node, holding no CPU of its own: the trial
  reserved it; a task, not an actor, so later trials reuse a worker that has
  torch imported), and the trial forwards each epoch to Tune from the checkpoints
  the loop writes. Checkpoints carry the whole metric history, so no epoch is
  missed however slowly we poll.
* Trials are ranked by the online monitor (pipelines/monitor.py), never by the SSL
  loss: losses are not comparable across temperatures. ``metric:`` is knn_top1 on
  the labelled evaluation set where there is one, else rankme (label-free). ASHA and PBT use ``epoch`` as their clock,
  so a trial restarted after an interrupted sweep stays on the same clock.
* PBT needs Tune-level checkpoints (it copies a good trial's weights into a weak
  one and perturbs its temperature, giving a temperature schedule); only the
  in-process path reports them, so PBT requires ``train.num_workers=0``.
* Pool and curation run once (``run_pipeline(until="curate", resume=True)``);
  every trial trains on the same curated shards, materialised once in the
  object store.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from curation.errors import InputError
from pipelines.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from pipelines.config import ConfigError, RunConfig, apply_overrides, config_from_dict, config_to_dict, read_yaml_file, set_dotted

DOMAIN_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
SCHEDULERS = ("asha", "pbt", "fifo")
#: what trials may be ranked by, and which way is better. Never the SSL loss (its scale differs across
#: temperatures and methods). knn_top1 needs a labelled evaluation set; rankme and uniformity need none
#: (pipelines/evaluation/label_free.py). Not alignment alone (a collapsed encoder aligns perfectly) nor
#: feature_std (a collapse alarm, not a measure of quality).
RANKABLE_METRICS = {"knn_top1": "max", "rankme": "max", "uniformity": "min"}
METRIC_NAMES = {"knn_top1": "online kNN top-1", "rankme": "RankMe", "uniformity": "uniformity"}
REFUSED_METRICS = {"alignment": "alignment alone is minimised by a collapsed encoder (every image on one point)",
                   "feature_std": "feature_std is a collapse alarm, not a measure of quality",
                   "loss": "SSL losses are not comparable across temperatures or methods"}
TOP_LEVEL_KEYS = ("base", "config", "overrides", "search", "scheduler", "num_samples", "max_concurrent", "metric",
                  "mode", "name", "storage_path")


# --------------------------------------------------------------------------- the search space


@dataclass
class Domain:
    """One searched key: ``grid``/``choice`` over values, or ``uniform``/``loguniform``/``randint`` bounds."""

    key: str
    kind: str
    values: list[Any]

    def to_tune(self) -> Any:
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "uniform":
            return tune.uniform(*self.values)
        if self.kind == "loguniform":
            return tune.loguniform(*self.values)
        return tune.randint(self.values[0], self.values[1] + 1)  # inclusive upper bound, as written

    def to_mutation(self) -> Any:
        """PBT resamples from a list or a Tune domain; a grid becomes the list of its values."""
        return list(self.values) if self.kind in ("grid", "choice") else self.to_tune()

    def numeric(self) -> bool:
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.values)


@dataclass
class SchedulerSpec:
    """Early stopping / population training; ``max_t`` 0 means ``train.epochs``."""

    name: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_t: int = 0
    perturbation_interval: int = 2
    #: keys PBT perturbs (default: every searched key)
    mutate: list[str] = field(default_factory=list)
    quantile_fraction: float = 0.25
    resample_probability: float = 0.25


@dataclass
class SweepSpec:
    """A parsed sweep file: the base run config plus what to search and how."""

    base: RunConfig
    search: dict[str, Domain]
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    num_samples: int = 1
    #: trials at once; 0 = as many as the cluster's CPUs fit
    max_concurrent: int = 0
    metric: str = "knn_top1"
    mode: str = "max"
    name: str = "sweep"
    #: where Tune keeps the experiment (local path or s3://, gs://); None = RUN_DIR/sweeps
    storage_path: Optional[str] = None
    source: Optional[str] = None


@dataclass
class SweepResult:
    sweep_dir: Path
    table_path: Path
    best_config_path: Path
    report_path: Path
    best: dict[str, Any]
    rows: list[dict[str, Any]]


def _fail(key: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"sweep key '{key}': {problem}; {fix}")


def _known_key(base: dict[str, Any], key: str) -> bool:
    node: Any = base
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return not isinstance(node, dict)


def trial_config(base: RunConfig | dict[str, Any], params: dict[str, Any]) -> RunConfig:
    """The validated RunConfig of one trial: the base with the sampled dotted keys set."""
    data = copy.deepcopy(base if isinstance(base, dict) else config_to_dict(base))
    for key, value in params.items():
        set_dotted(data, key, value)
    return config_from_dict(data)


def _parse_domain(key: str, raw: Any, base: dict[str, Any]) -> Domain:
    if not _known_key(base, key):
        raise _fail(key, "is not a config key", "use a dotted key such as method.temperature, train.lr, "
                    "augment.jitter_strength (see pipelines/config.py)")
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in DOMAIN_KINDS:
        raise _fail(key, f"got {raw!r}", f"write one of {{{', '.join(k + ': ...' for k in DOMAIN_KINDS)}}}, "
                    "e.g. {grid: [0.1, 0.2]} or {loguniform: [1.0e-4, 1.0e-2]}")
    kind, values = next(iter(raw.items()))
    if not isinstance(values, list) or not values:
        raise _fail(key, f"{kind} needs a non-empty list, got {values!r}", f"write {{{kind}: [...]}}")
    if kind in ("uniform", "loguniform", "randint"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise _fail(key, f"{kind} needs two numbers [low, high], got {values!r}", f"write {{{kind}: [low, high]}}")
        if not values[0] < values[1]:
            raise _fail(key, f"{kind} bounds {values!r} are not increasing", "write [low, high] with low < high")
        if kind == "loguniform" and values[0] <= 0:
            raise _fail(key, f"loguniform needs positive bounds, got {values!r}", "use uniform, or a low bound > 0")
        if kind == "randint" and not all(isinstance(v, int) for v in values):
            raise _fail(key, f"randint needs integer bounds, got {values!r}", "write integers")
    domain = Domain(key, kind, list(values))
    # every listed value / both bounds must make a valid config, now, not mid-sweep (uniform samples are floats)
    for value in ([float(v) for v in values] if kind in ("uniform", "loguniform") else values):
        try:
            trial_config(base, {key: value})
        except ConfigError as exc:
            raise _fail(key, f"value {value!r} is not allowed ({exc})", "change the search space") from None
    return domain


def _as_override_list(raw: Any, where: str) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, dict):
        return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}" for k, v in raw.items()]
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        return list(raw)
    raise ConfigError(f"sweep key '{where}': must be a mapping of dotted keys to values or a list of key=value")


def _parse_scheduler(raw: Any, search: dict[str, Domain], base: RunConfig) -> SchedulerSpec:
    raw = {"name": raw} if isinstance(raw, str) else (raw or {})
    if not isinstance(raw, dict):
        raise _fail("scheduler", f"got {raw!r}", "write e.g. {name: asha, grace_period: 1, reduction_factor: 2}")
    allowed = {f for f in SchedulerSpec.__dataclass_fields__}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise _fail(f"scheduler.{unknown[0]}", "is not a scheduler setting", f"allowed: {', '.join(sorted(allowed))}")
    spec = SchedulerSpec(**raw)
    if spec.name not in SCHEDULERS:
        raise _fail("scheduler.name", f"got {spec.name!r}", f"use one of {', '.join(SCHEDULERS)}")
    if spec.max_t < 0 or spec.max_t > base.train.epochs:
        raise _fail("scheduler.max_t", f"got {spec.max_t}", f"use 0 (= train.epochs) or 1..{base.train.epochs}")
    spec.max_t = spec.max_t or base.train.epochs
    if not 1 <= spec.grace_period <= spec.max_t:
        raise _fail("scheduler.grace_period", f"got {spec.grace_period}", f"use 1..{spec.max_t} (max_t)")
    if spec.reduction_factor <= 1:
        raise _fail("scheduler.reduction_factor", f"got {spec.reduction_factor}", "use a number > 1 (2 halves)")
    if spec.name == "pbt":
        spec.mutate = list(spec.mutate or search)
        bad = [k for k in spec.mutate if k not in search]
        if bad:
            raise _fail("scheduler.mutate", f"{bad[0]!r} is not searched", "list keys that appear under search:")
        if base.train.num_workers != 0:
            raise _fail("scheduler.name", "pbt needs Tune-level checkpoints, which only in-process trials report",
                        "set train.num_workers: 0 in overrides, or use asha")
        if spec.perturbation_interval < 1:
            raise _fail("scheduler.perturbation_interval", f"got {spec.perturbation_interval}", "use epochs >= 1")
    return spec


def parse_search_space(data: dict[str, Any], base_dir: Path, overrides: list[str] | None = None,
                       source: Optional[str] = None) -> SweepSpec:
    """Build a SweepSpec from parsed YAML; ``base:`` paths are relative to ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError("a sweep file must hold a mapping (base, overrides, search, scheduler, ...)")
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise _fail(unknown[0], "is not a sweep setting", f"allowed top-level keys: {', '.join(TOP_LEVEL_KEYS)}")
    if "base" in data and "config" in data:
        raise _fail("base", "both base: and config: given", "keep one (a file path, or the config inline)")
    if "base" in data:
        base_path = (base_dir / str(data["base"])).resolve()
        if not base_path.is_file():
            raise _fail("base", f"file not found: {base_path}", "give a path relative to the sweep file")
        base_data = read_yaml_file(base_path, "base config", "configs/demo.yaml") or {}
    else:
        base_data = copy.deepcopy(data.get("config") or {})
    base_data = apply_overrides(base_data, _as_override_list(data.get("overrides"), "overrides") + list(overrides or []))
    base = config_from_dict(base_data)
    if base.train.knn_monitor_every != 1:
        raise _fail("train.knn_monitor_every", f"is {base.train.knn_monitor_every}",
                    "sweeps rank trials by the online monitor every epoch: set it to 1")
    base_dict = config_to_dict(base)
    raw_search = data.get("search")
    if not isinstance(raw_search, dict) or not raw_search:
        raise _fail("search", f"got {raw_search!r}", "map dotted config keys to domains, e.g. "
                    "search: {method.temperature: {grid: [0.1, 0.5]}}")
    search = {str(k): _parse_domain(str(k), v, base_dict) for k, v in raw_search.items()}
    metric = _choose_metric(data.get("metric"), base)
    mode = RANKABLE_METRICS[metric]
    if data.get("mode", mode) != mode:
        raise _fail("mode", f"got {data.get('mode')!r}", f"{metric} is better when {'higher' if mode == 'max' else 'lower'}: "
                    f"use {mode} (or leave mode out)")
    num_samples, max_concurrent = data.get("num_samples", 1), data.get("max_concurrent", 0)
    if not isinstance(num_samples, int) or num_samples < 1:
        raise _fail("num_samples", f"got {num_samples!r}", "use an integer >= 1 (grids are multiplied by it)")
    if not isinstance(max_concurrent, int) or max_concurrent < 0:
        raise _fail("max_concurrent", f"got {max_concurrent!r}", "use an integer >= 0 (0 = fit the cluster)")
    name = str(data.get("name", "sweep"))
    if not name or "/" in name or name.startswith("."):
        raise _fail("name", f"got {name!r}", "use a plain folder name")
    return SweepSpec(base=base, search=search, scheduler=_parse_scheduler(data.get("scheduler"), search, base),
                     num_samples=num_samples, max_concurrent=max_concurrent, metric=metric, mode=mode, name=name,
                     storage_path=data.get("storage_path"), source=source)


def _choose_metric(raw: Any, base: RunConfig) -> str:
    """The metric trials are ranked by: as written, else knn_top1 with a labelled evaluation set and
    rankme without. Asking for kNN without labels fails here, at load, not after every trial trained."""
    labelled = base.has_labelled_eval()
    metric = raw if raw is not None else ("knn_top1" if labelled else "rankme")
    allowed = ("rank by knn_top1 (needs eval.bank_source and eval.query_source), rankme (max) or "
               "uniformity (min)")
    if metric in REFUSED_METRICS:
        raise _fail("metric", f"got {metric!r}: {REFUSED_METRICS[metric]}", allowed)
    if metric not in RANKABLE_METRICS:
        raise _fail("metric", f"got {metric!r}", allowed)
    if metric == "knn_top1" and not labelled:
        raise _fail("metric", "knn_top1 needs a labelled evaluation set and this base config has none",
                    "set eval.bank_source and eval.query_source (labelled folders or shards), or rank by rankme "
                    "(label-free)")
    if metric != "knn_top1" and base.train.monitor_pool_samples == 0:
        raise _fail("metric", f"{metric} is computed on the monitor's pool sample, and train.monitor_pool_samples is 0",
                    "set train.monitor_pool_samples (e.g. 2048) or rank by knn_top1")
    return metric


def load_search_space(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    """Load and fully validate a sweep YAML (see configs/sweep_demo.yaml); ``overrides`` apply to the base."""
    p = Path(path)
    data = read_yaml_file(p, "sweep", "configs/sweep_demo.yaml")
    return parse_search_space(data, p.resolve().parent, overrides, source=str(p))


# --------------------------------------------------------------------------- storage


def _is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def sweep_dir(cfg: RunConfig, spec: SweepSpec) -> Path:
    """Local folder for trial checkpoints and results: RUN_DIR/sweeps/NAME (absolute: trials chdir).

    Trials append their start log and keep checkpoints on local disk, so a bucket run_dir is refused
    here (it would silently become a local folder named ``s3:``); Tune's own state may still go to a
    bucket through the sweep file's ``storage_path``."""
    if _is_uri(cfg.run_dir):
        raise InputError(f"sweeps keep their trials on local disk, so run_dir must be a local path, not "
                         f"{cfg.run_dir}; use a local run_dir and set storage_path: s3://... in the sweep file to "
                         "keep Tune's experiment in the bucket")
    return (Path(cfg.run_dir) / "sweeps" / spec.name).resolve()


def storage_root(cfg: RunConfig, spec: SweepSpec) -> str:
    """Tune's storage_path: the spec's (local or cloud uri), else RUN_DIR/sweeps/NAME/tune."""
    if spec.storage_path:
        sp = spec.storage_path
        return sp if "://" in sp else str(Path(sp).resolve())
    return str(sweep_dir(cfg, spec) / "tune")


def _remove_experiment(exp_path: str) -> None:
    """Delete Tune's experiment folder, local or in object storage (for --overwrite)."""
    import pyarrow.fs as pafs

    if "://" not in exp_path:
        shutil.rmtree(exp_path, ignore_errors=True)
        return
    fs, root = pafs.FileSystem.from_uri(exp_path)
    if fs.get_file_info(root).type != pafs.FileType.NotFound:
        fs.delete_dir(root)


def _upload(local: Path, uri_dir: str) -> None:
    """Copy a result file next to the Tune experiment when that lives in object storage."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri_dir)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root.rstrip('/')}/{local.name}") as out:
        out.write(local.read_bytes())


# --------------------------------------------------------------------------- one trial


def _append_line(path: Path, record: dict[str, Any]) -> None:
    """One JSON line, appended in a single write so concurrent or killed writers never interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def _read_lines(path: Path) -> list[dict[str, Any]]:
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
    import torch
    from ray import tune

    from pipelines.pretrain import CHECKPOINT_FILE

    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return 0
    with ckpt.as_directory() as d:
        state = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        epoch = int(state["epoch"])
        shutil.rmtree(local_root, ignore_errors=True)
        target = local_root / f"epoch_{epoch:06d}"
        target.mkdir(parents=True)
        shutil.copyfile(Path(d) / CHECKPOINT_FILE, target / CHECKPOINT_FILE)
    return epoch


def _newest_history(local_root: Path, seen: int) -> tuple[int, list[dict[str, Any]], Optional[Path]]:
    """History inside the newest local checkpoint if it is past epoch ``seen`` (it may vanish: pruned)."""
    import torch

    from pipelines.pretrain import CHECKPOINT_FILE

    dirs = sorted(local_root.glob("epoch_*")) if local_root.exists() else []
    if not dirs or int(dirs[-1].name.split("_")[1]) <= seen:
        return seen, [], None
    try:
        state = torch.load(dirs[-1] / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError):
        return seen, [], None
    return int(state["epoch"]), list(state["history"]), dirs[-1]


def _report_epochs(history: list[dict[str, Any]], after: int, params: dict[str, Any], ckpt_dir: Optional[Path],
                   with_checkpoint: bool) -> int:
    """Send epochs past ``after`` to Tune (with a Tune checkpoint on the newest one for PBT)."""
    from ray import tune

    from pipelines.pretrain import CHECKPOINT_FILE

    new = [h for h in history if h["epoch"] > after]
    for i, metrics in enumerate(new):
        out = {**metrics, **{f"param/{k}": v for k, v in params.items()}}
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


def _train_in_helper(cfg: RunConfig, train_ds: Any, monitor_sets: Any, trial_dir: Path, run_name: str,
                    params: dict[str, Any], with_checkpoints: bool) -> int:
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
                reported = _report_epochs(history, reported, params, ckpt_dir, with_checkpoints)
            if done:
                break
    except BaseException:  # Tune stops a trial by raising SystemExit in report(): stop the helper too
        ray.cancel(pending, force=True)
        raise
    history = ray.get(pending)  # raises the trial's own error, if any
    _, _, ckpt_dir = _newest_history(local_root, 0)
    return _report_epochs(history, reported, params, ckpt_dir, with_checkpoints)


def _train_with_ray_train(cfg: RunConfig, train_ds: Any, monitor_sets: Any, trial_dir: Path, run_name: str) -> int:
    """DDP trial: the supported Train V2 + Tune pattern; rank 0's metrics reach Tune through the callback."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.pretrain import pretrain

    result = pretrain(cfg, train_ds, trial_dir, monitor_sets, name=run_name, callbacks=[TuneReportCallback()])
    return int(result.history[-1]["epoch"]) if result.history else 0


def _finished_history(trial_dir: Path) -> Optional[list[dict[str, Any]]]:
    """The metric history of a trial that already ran to its end (marker + final checkpoint), else None."""
    import torch

    final = trial_dir / "checkpoint.pt"
    if not (trial_dir / "finished.jsonl").exists() or not final.exists():
        return None
    return list(torch.load(final, map_location="cpu", weights_only=True)["history"])


def sweep_trial(params: dict[str, Any], *, base: dict[str, Any], trials_dir: str, train_ds: Any, monitor_sets: Any,
                with_checkpoints: bool) -> None:
    """The Tune function trainable: one trial = one pretraining run of the sampled config."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(base, params)
    trial_dir = Path(trials_dir) / trial_id
    finished = _finished_history(trial_dir)
    if finished is not None:
        # the driver died after this trial finished but before Tune saved that: hand back its results, don't retrain
        _append_line(trial_dir / "replays.jsonl", {"time": time.time(), "pid": os.getpid()})
        _report_epochs(finished, 0, params, None, False)
        return
    # one line per (re)start: proves on resume that finished trials were not run again
    _append_line(trial_dir / "starts.jsonl", {"time": time.time(), "pid": os.getpid(), "params": params})
    if cfg.train.num_workers == 0:
        last = _train_in_helper(cfg, train_ds, monitor_sets, trial_dir, trial_id, params, with_checkpoints)
    else:
        last = _train_with_ray_train(cfg, train_ds, monitor_sets, trial_dir, trial_id)
    _append_line(trial_dir / "finished.jsonl", {"time": time.time(), "epoch": last})


# --------------------------------------------------------------------------- the driver


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


def trial_cpus(cfg: RunConfig) -> float:
    """CPUs one trial holds: its in-process worker, or all of its DDP workers."""
    tc = cfg.train
    return tc.cpus_per_worker if tc.num_workers == 0 else tc.num_workers * tc.cpus_per_worker


def _concurrency(cfg: RunConfig, spec: SweepSpec) -> int:
    """As many trials as the cluster's CPUs fit (DDP workers are invisible to Tune, so count them here)."""
    import ray

    if spec.max_concurrent:
        return spec.max_concurrent
    cpus = float(ray.cluster_resources().get("CPU", 1))
    return max(1, int(math.floor(cpus / trial_cpus(cfg) + 1e-9)))


def _datasets(cfg: RunConfig) -> tuple[Any, Any]:
    """Pool + curation once (resumable), then the curated train set and the monitor's sets (pipelines/monitor.py:
    a sample of the labelled evaluation set, a pool sample for label-free metrics), materialised once."""
    from pipelines.readers import read_decoded
    from pipelines.monitor import monitor_sets_for_run
    from pipelines.run import RunDir, run_pipeline

    run_pipeline(cfg, until="curate", resume=True)
    run = RunDir(cfg.run_dir)
    pool, cur = run.record("pool"), run.record("curate")
    if pool is None or cur is None:
        raise InputError(f"{cfg.run_dir}: pool/curate stage records missing after curation; rerun with --overwrite")
    d = cfg.data
    train = read_decoded(cur["shards"], d.image_size, d.channels, d.intensity).select_columns(["image", "label"])
    return train.materialize(), monitor_sets_for_run(cfg, pool, cur).materialize()


def experiment_path(cfg: RunConfig, spec: SweepSpec) -> str:
    """Where Tune keeps this sweep's experiment state (what ``--resume`` restores)."""
    return f"{storage_root(cfg, spec).rstrip('/')}/{spec.name}"


def _exists(exp_path: str, resume: bool) -> bool:
    """Whether there is a sweep to resume; refuses to silently start over on top of one."""
    from ray import tune

    if not tune.Tuner.can_restore(exp_path):
        return False
    if not resume:
        raise InputError(f"sweep already exists at {exp_path}; pass --resume to continue it (finished trials "
                         f"are kept), --overwrite to start over, or set name: OTHER in the sweep file")
    return True


def _make_tuner(cfg: RunConfig, spec: SweepSpec, train_ds: Any, monitor_sets: Any, resume: bool) -> Any:
    from ray import tune

    sdir = sweep_dir(cfg, spec)
    base = config_to_dict(cfg)
    if cfg.train.tracking == "mlflow" and not cfg.train.tracking_uri:  # one MLflow store: trials side by side
        base["train"]["tracking_uri"] = (sdir / "mlruns").as_uri()
    trainable = tune.with_parameters(
        sweep_trial, base=base, trials_dir=str(sdir / "trials"), train_ds=train_ds, monitor_sets=monitor_sets,
        with_checkpoints=spec.scheduler.name == "pbt",
    )
    # in-process trials reserve their CPU in Tune; DDP trials' workers ask Train for theirs
    per_trial = trial_cpus(cfg) if cfg.train.num_workers == 0 else 0.01
    trainable = tune.with_resources(trainable, {"cpu": per_trial})
    root = storage_root(cfg, spec)
    exp_path = experiment_path(cfg, spec)
    if _exists(exp_path, resume):
        print(f"[sweep] resuming {exp_path}", flush=True)
        return tune.Tuner.restore(exp_path, trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space={k: d.to_tune() for k, d in spec.search.items()},
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, scheduler=_scheduler(spec),
                                    num_samples=spec.num_samples, max_concurrent_trials=_concurrency(cfg, spec)),
        run_config=tune.RunConfig(name=spec.name, storage_path=root, verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


def run_sweep(cfg: RunConfig, spec: SweepSpec, *, resume: bool = False, overwrite: bool = False) -> SweepResult:
    """Run (or resume) the sweep; write trials.parquet, best_config.yaml and report.html in the sweep folder."""
    from pipelines.ray_runtime import ensure_ray

    sdir = sweep_dir(cfg, spec)
    if overwrite:
        shutil.rmtree(sdir, ignore_errors=True)
        _remove_experiment(experiment_path(cfg, spec))
    _exists(experiment_path(cfg, spec), resume)  # fail before any work when --resume is missing
    for key, domain in spec.search.items():  # the CLI may have overridden the base since load time
        for value in domain.values:
            trial_config(cfg, {key: value})
    ensure_ray(cfg.ray)
    train_ds, monitor_sets = _datasets(cfg)
    print(f"[sweep] {spec.name}: {len(spec.search)} searched key(s), scheduler {spec.scheduler.name}, "
          f"{_concurrency(cfg, spec)} trial(s) at once; results in {sdir}", flush=True)
    tuner = _make_tuner(cfg, spec, train_ds, monitor_sets, resume)
    grid = tuner.fit()
    return write_results(cfg, spec, grid)


# --------------------------------------------------------------------------- results


#: per-epoch values kept in a trial's curve (the monitor's figures and the optimiser's)
CURVE_KEYS = ("epoch", "knn_top1", "rankme", "alignment", "uniformity", "feature_std", "loss", "lr")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == value


def _curve(result: Any) -> list[dict[str, Any]]:
    """Per-epoch metrics of one trial, the latest report per epoch (a restarted trial re-reports)."""
    df = result.metrics_dataframe
    if df is None or "epoch" not in df:
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for row in df.to_dict("records"):
        if row.get("epoch") == row.get("epoch"):  # not NaN
            by_epoch[int(row["epoch"])] = {k: row.get(k) for k in CURVE_KEYS if k in row
                                           } | {k: v for k, v in row.items() if str(k).startswith("param/")}
    return [by_epoch[e] for e in sorted(by_epoch)]


def trial_rows(cfg: RunConfig, spec: SweepSpec, grid: Any) -> list[dict[str, Any]]:
    """One row per trial: its params, last/best kNN, epochs run, how it ended, how often it was started."""
    sdir = sweep_dir(cfg, spec)
    rows = []
    for result in grid:
        params = {k: (result.config or {}).get(k) for k in spec.search}
        curve = _curve(result)
        trial_id = str((result.metrics or {}).get("trial_id") or Path(result.path).name)
        starts = _read_lines(sdir / "trials" / trial_id / "starts.jsonl")
        values = [c[spec.metric] for c in curve if _finite(c.get(spec.metric))]
        best_of = max if spec.mode == "max" else min
        epochs = int(curve[-1]["epoch"]) if curve else 0
        error = str(result.error).splitlines()[0][:300] if result.error else None
        status = "error" if error else ("completed" if epochs >= spec.scheduler.max_t else "stopped_early")
        others = {k: next((c[k] for c in reversed(curve) if _finite(c.get(k))), float("nan"))
                  for k in ("knn_top1", "rankme") if k != spec.metric and any(k in c for c in curve)}
        rows.append({
            "trial_id": trial_id, "status": status, **params,
            spec.metric: values[-1] if values else float("nan"),
            f"{spec.metric}_best": best_of(values) if values else float("nan"), **others,
            "epochs": epochs, "loss_last": curve[-1]["loss"] if curve else float("nan"),
            "starts": len(starts), "first_start": starts[0]["time"] if starts else float("nan"),
            "error": error, "curve": json.dumps(curve),
        })
    sign = -1.0 if spec.mode == "max" else 1.0  # best first; trials without a value last
    rows.sort(key=lambda r: (not _finite(r[spec.metric]), sign * r[spec.metric] if _finite(r[spec.metric]) else 0.0,
                             r["trial_id"]))
    return rows


def write_results(cfg: RunConfig, spec: SweepSpec, grid: Any) -> SweepResult:
    """Parquet table, best config YAML (ready for ``sslpipe run``), summary JSON and the HTML report."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sdir = sweep_dir(cfg, spec)
    rows = trial_rows(cfg, spec, grid)
    ok = [r for r in rows if r["status"] != "error" and _finite(r[spec.metric])]
    if not ok:
        raise RuntimeError(f"sweep '{spec.name}': no trial reported {spec.metric}; see errors in {sdir}")
    best = ok[0]
    table = pa.Table.from_pylist(rows)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    table_path = write_bytes_atomic(buf.getvalue().to_pybytes(), sdir / "trials.parquet")
    best_cfg = trial_config(cfg, {k: best[k] for k in spec.search})
    best_dict = config_to_dict(best_cfg)
    best_dict["run_dir"] = str(sdir / "best_run")
    header = (f"# best trial {best['trial_id']} of sweep '{spec.name}': {METRIC_NAMES[spec.metric]} "
              f"{best[spec.metric]:.4f}\n"
              f"# searched: {', '.join(f'{k}={best[k]}' for k in spec.search)}\n# run it: sslpipe run THIS_FILE\n")
    best_path = write_text_atomic(header + yaml.safe_dump(best_dict, sort_keys=False), sdir / "best_config.yaml")
    summary = {"name": spec.name, "metric": spec.metric, "scheduler": spec.scheduler.name, "best": {
        k: v for k, v in best.items() if k != "curve"}, "trials": len(rows),
        "stopped_early": sum(r["status"] == "stopped_early" for r in rows),
        "errors": sum(r["status"] == "error" for r in rows)}
    write_json_atomic(summary, sdir / "summary.json")
    report_path = write_text_atomic(build_sweep_report(spec, rows, best), sdir / "report.html")
    root = storage_root(cfg, spec)
    if _is_uri(root):
        for p in (table_path, best_path, report_path, sdir / "summary.json"):
            _upload(p, f"{root.rstrip('/')}/{spec.name}/results")
    return SweepResult(sdir, table_path, best_path, report_path, best, rows)


# --------------------------------------------------------------------------- the report


def _png_uri(fig: Any) -> str:
    """A figure as a data: URI, so the report is one self-contained file."""
    import base64
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _x_key(spec: SweepSpec) -> Optional[str]:
    """The key kNN is plotted against: the temperature when searched, else the first numeric key."""
    numeric = [k for k, d in spec.search.items() if d.numeric()]
    return "method.temperature" if "method.temperature" in numeric else (numeric[0] if numeric else None)


def knn_vs_param_plot(spec: SweepSpec, rows: list[dict[str, Any]]) -> Optional[str]:
    """The final ranking metric against the temperature (or first numeric key), one line per value of another key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key = _x_key(spec)
    if x_key is None:
        return None
    others = [k for k in spec.search if k != x_key and spec.search[k].kind in ("grid", "choice")]
    group_key = others[0] if len(others) == 1 else None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        if r["status"] != "error":
            groups.setdefault(r[group_key] if group_key else None, []).append(r)
    for value, members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        members.sort(key=lambda r: r[x_key])
        label = f"{group_key}={value}" if group_key else f"final {spec.metric}"
        line = ax.plot([r[x_key] for r in members], [r[spec.metric] for r in members], marker="o", label=label)[0]
        stopped = [r for r in members if r["status"] == "stopped_early"]
        ax.scatter([r[x_key] for r in stopped], [r[spec.metric] for r in stopped], marker="x", s=60,
                   color=line.get_color(), zorder=3)
    if spec.search[x_key].kind == "loguniform" or x_key in ("method.temperature", "train.lr"):
        ax.set_xscale("log")
    ax.set_xlabel(x_key)
    ax.set_ylabel(f"{METRIC_NAMES[spec.metric]} (last epoch run)")
    ax.set_title(f"{spec.metric} vs {x_key} (x = stopped early by the scheduler)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png_uri(fig)


def learning_curves_plot(spec: SweepSpec, rows: list[dict[str, Any]]) -> str:
    """The ranking metric per epoch for every trial; dashed = stopped early."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for r in rows:
        curve = [c for c in json.loads(r["curve"]) if _finite(c.get(spec.metric))]
        if not curve:
            continue
        label = ", ".join(f"{k.split('.')[-1]}={_fmt(r[k])}" for k in spec.search)
        ax.plot([c["epoch"] for c in curve], [c[spec.metric] for c in curve], marker=".",
                linestyle="--" if r["status"] == "stopped_early" else "-", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(METRIC_NAMES[spec.metric])
    ax.set_title("Learning curves per trial (dashed = stopped early)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return _png_uri(fig)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def build_sweep_report(spec: SweepSpec, rows: list[dict[str, Any]], best: dict[str, Any]) -> str:
    """The sweep's HTML page: best trial, the table, kNN vs temperature and the learning curves."""
    import html

    cols = ["trial_id", "status", *spec.search, spec.metric, f"{spec.metric}_best", "epochs", "loss_last", "starts"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr" + (' class="best"' if r is best else "") + ">" + "".join(f"<td>{html.escape(_fmt(r[c]))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    plots = [p for p in (knn_vs_param_plot(spec, rows), learning_curves_plot(spec, rows)) if p]
    imgs = "".join(f'<p><img src="{p}" alt="sweep plot"></p>' for p in plots)
    sched = spec.scheduler
    name = METRIC_NAMES[spec.metric]
    basis = ("held-out images of the labelled evaluation set" if spec.metric == "knn_top1"
             else "a fixed random sample of the curated pool, no labels needed")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>sslpipe sweep {html.escape(spec.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}tr.best{{background:#e6f2e6}}</style></head><body>
<h1>Sweep <code>{html.escape(spec.name)}</code></h1>
<p>Trials are ranked by <b>{name}</b> ({"higher" if spec.mode == "max" else "lower"} is better) after each epoch
({basis}; never by the SSL loss, which is not comparable across temperatures). Scheduler: <b>{html.escape(sched.name)}</b>
(grace period {sched.grace_period}, reduction factor {sched.reduction_factor:g}, max {sched.max_t} epochs).</p>
<p>Best: trial <code>{html.escape(str(best['trial_id']))}</code>, {name} {best[spec.metric]:.4f} with
{html.escape(', '.join(f'{k} = {_fmt(best[k])}' for k in spec.search))}. Its full config is in
<code>best_config.yaml</code> (run it with <code>sslpipe run best_config.yaml</code>).</p>
<table><tr>{head}</tr>{body}</table>
{imgs}
</body></html>
"""


def format_table(spec: SweepSpec, rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of the trials, best first."""
    cols = ["trial_id", "status", *spec.search, spec.metric, "epochs"]
    cells = [[_fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``sslpipe sweep SWEEP.yaml [key=value ...] [--resume] [--overwrite] [--address ADDR]``."""
    p = subparsers.add_parser(
        "sweep", help="Ray Tune sweep over config keys, ranked by online kNN (ASHA/PBT), resumable",
        description="Searches dotted config keys (grid, choice, uniform, loguniform, randint) from a sweep YAML "
        "(see configs/sweep_demo.yaml). Pool and curation run once; each trial pretrains and reports online kNN "
        "top-1 every epoch. Writes RUN_DIR/sweeps/NAME/{trials.parquet,best_config.yaml,report.html}.")
    p.add_argument("config", help="sweep YAML: base config, overrides, search space, scheduler")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the base config, e.g. train.epochs=5")
    p.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep; finished trials are kept")
    p.add_argument("--overwrite", action="store_true", help="delete this sweep's results and start over")
    from pipelines.console import add_verbose_option

    add_verbose_option(p)
    return p


def run_sweep_cli(args: argparse.Namespace) -> int:
    """Run the sweep verb; user errors propagate as ConfigError/InputError for the CLI to print."""
    overrides = list(args.overrides) + ([f"ray.address={args.address}"] if args.address else [])
    spec = load_search_space(args.config, overrides)
    result = run_sweep(spec.base, spec, resume=args.resume, overwrite=args.overwrite)
    print(format_table(spec, result.rows), flush=True)
    print(f"[sweep] best: {result.best['trial_id']} {spec.metric} {result.best[spec.metric]:.4f}; table {result.table_path}; "
          f"best config {result.best_config_path}; report {result.report_path}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.sweep ...``, the same as ``sslpipe sweep ...`` (same console, same errors)."""
    from pipelines.cli import main as cli_main

    return cli_main(["sweep", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
