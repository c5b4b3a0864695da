"""The sweep file: what to search and how, parsed and fully validated at load (before any compute).

Every searched value (both bounds of a range) must make a valid run config now, not mid-sweep; the
ranking metric must be one that can be computed for this base config.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

import storage
from pipelines.config import (ConfigError, PipelineConfig, apply_overrides, config_from_dict, config_to_dict,
                              read_yaml_file, set_dotted)


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

    base: PipelineConfig
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



def _fail(key: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"sweep key '{key}': {problem}; {fix}")


def _known_key(base: dict[str, Any], key: str) -> bool:
    node: Any = base
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return not isinstance(node, dict)


def trial_config(base: PipelineConfig | dict[str, Any], params: dict[str, Any]) -> PipelineConfig:
    """The validated PipelineConfig of one trial: the base with the sampled dotted keys set."""
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


def _parse_scheduler(raw: Any, search: dict[str, Domain], base: PipelineConfig) -> SchedulerSpec:
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
    scheduler = _parse_scheduler(data.get("scheduler"), search, base)
    # asha and pbt compare trials epoch by epoch; fifo reads only the last epoch, which is always scored
    if base.train.knn_monitor_every != 1 and (scheduler.name != "fifo" or base.train.knn_monitor_every == 0):
        raise _fail("train.knn_monitor_every", f"is {base.train.knn_monitor_every}",
                    f"the {scheduler.name} scheduler ranks trials by the online monitor every epoch: set it to 1"
                    if scheduler.name != "fifo" else "trials are ranked by the monitor's last-epoch figures: set it >= 1")
    return SweepSpec(base=base, search=search, scheduler=scheduler,
                     num_samples=num_samples, max_concurrent=max_concurrent, metric=metric, mode=mode, name=name,
                     storage_path=_storage_path(data.get("storage_path")), source=source)


def _storage_path(raw: Any) -> Optional[str]:
    """``storage_path:`` as given, checked at load: a non-empty string without credentials in it (Tune copies
    it into its experiment state and logs; the message shows it masked)."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        raise _fail("storage_path", f"got {raw!r}", "give a local folder or a bucket uri such as s3://bucket/sweeps")
    if storage.has_credentials(raw):
        raise _fail("storage_path", f"credentials inside the uri {storage.redact(raw)} are refused (they would be "
                    "copied into Tune's experiment state and logs)", "give them by environment instead: "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL_S3 for MinIO or other "
                    "S3-compatible stores), or GOOGLE_APPLICATION_CREDENTIALS")
    return raw


def _choose_metric(raw: Any, base: PipelineConfig) -> str:
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
