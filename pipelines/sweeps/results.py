"""A finished sweep's results: one row per trial (trials.parquet), the best trial's config ready for
``sslpipe run`` (best_config.yaml), summary.json and the HTML report, copied next to a bucket experiment."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import storage
from pipelines.config import PipelineConfig, config_to_dict
from pipelines.sweeps.locations import storage_root, sweep_dir, upload_result
from pipelines.sweeps.report import build_sweep_report, finite
from pipelines.sweeps.space import METRIC_NAMES, SweepSpec, trial_config
from pipelines.sweeps.trial import read_lines


@dataclass
class SweepResult:
    """What a finished sweep wrote, and its rows best first."""

    sweep_dir: Path
    table_path: Path
    best_config_path: Path
    report_path: Path
    best: dict[str, Any]
    rows: list[dict[str, Any]]


#: per-epoch values kept in a trial's curve (the monitor's figures and the optimiser's)
CURVE_KEYS = ("epoch", "step", "knn_top1", "knn_tail_top1", "rankme", "alignment", "uniformity", "feature_std", "loss",
              "lr", "active_samples", "epoch_seconds", "prune_embed_seconds", "prune_round_seconds")


def _time_split(curve: list[dict[str, Any]]) -> dict[str, float]:
    """Where a trial's time went: training epochs, re-embedding the pool in pruning rounds, and the rest of
    those rounds (clustering and selection)."""
    def total(key: str) -> float:
        return float(sum(c[key] for c in curve if finite(c.get(key))))

    embed = total("prune_embed_seconds")
    return {"train_seconds": total("epoch_seconds"), "reembed_seconds": embed,
            "select_seconds": max(0.0, total("prune_round_seconds") - embed)}


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


def trial_rows(cfg: PipelineConfig, spec: SweepSpec, grid: Any) -> list[dict[str, Any]]:
    """One row per trial: its params, last/best kNN, epochs run, how it ended, how often it was started."""
    sdir = sweep_dir(cfg, spec)
    rows: list[dict[str, Any]] = []
    for result in grid:
        params = {k: (result.config or {}).get(k) for k in spec.search}
        curve = _curve(result)
        trial_id = str((result.metrics or {}).get("trial_id") or Path(result.path).name)
        starts = read_lines(sdir / "trials" / trial_id / "starts.jsonl")
        values = [c[spec.metric] for c in curve if finite(c.get(spec.metric))]
        best_of = max if spec.mode == "max" else min
        epochs = int(curve[-1]["epoch"]) if curve else 0
        error = str(result.error).splitlines()[0][:300] if result.error else None
        # finished: ran to its epoch count or its step budget (train.max_steps); else the scheduler stopped it
        finished = epochs >= spec.scheduler.max_t or (sdir / "trials" / trial_id / "finished.jsonl").exists()
        status = "error" if error else ("completed" if finished else "stopped_early")
        others = {k: next((c[k] for c in reversed(curve) if finite(c.get(k))), float("nan"))
                  for k in ("knn_top1", "knn_tail_top1", "rankme") if k != spec.metric and any(k in c for c in curve)}
        rows.append({
            "trial_id": trial_id, "status": status, **params,
            spec.metric: values[-1] if values else float("nan"),
            f"{spec.metric}_best": best_of(values) if values else float("nan"), **others,
            "epochs": epochs, "steps": int(curve[-1].get("step") or 0) if curve else 0, **_time_split(curve),
            "loss_last": curve[-1]["loss"] if curve else float("nan"),
            "starts": len(starts), "first_start": starts[0]["time"] if starts else float("nan"),
            "error": error, "curve": json.dumps(curve),
        })
    sign = -1.0 if spec.mode == "max" else 1.0  # best first; trials without a value last
    rows.sort(key=lambda r: (not finite(r[spec.metric]), sign * r[spec.metric] if finite(r[spec.metric]) else 0.0,
                             r["trial_id"]))
    return rows


def write_results(cfg: PipelineConfig, spec: SweepSpec, grid: Any) -> SweepResult:
    """Parquet table, best config YAML (ready for ``sslpipe run``), summary JSON and the HTML report."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sdir = sweep_dir(cfg, spec)
    rows = trial_rows(cfg, spec, grid)
    ok = [r for r in rows if r["status"] != "error" and finite(r[spec.metric])]
    if not ok:
        raise RuntimeError(f"sweep '{spec.name}': no trial reported {spec.metric}; see errors in {sdir}")
    best = ok[0]
    table = pa.Table.from_pylist(rows)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    table_path = Path(storage.write_bytes(sdir / "trials.parquet", buf.getvalue().to_pybytes()))
    best_cfg = trial_config(cfg, {k: best[k] for k in spec.search})
    best_dict = config_to_dict(best_cfg)
    best_dict["run_dir"] = str(sdir / "best_run")
    header = (f"# best trial {best['trial_id']} of sweep '{spec.name}': {METRIC_NAMES[spec.metric]} "
              f"{best[spec.metric]:.4f}\n"
              f"# searched: {', '.join(f'{k}={best[k]}' for k in spec.search)}\n# run it: sslpipe run THIS_FILE\n")
    best_path = Path(storage.write_text(sdir / "best_config.yaml", header + yaml.safe_dump(best_dict, sort_keys=False)))
    summary = {"name": spec.name, "metric": spec.metric, "scheduler": spec.scheduler.name, "best": {
        k: v for k, v in best.items() if k != "curve"}, "trials": len(rows),
        "stopped_early": sum(r["status"] == "stopped_early" for r in rows),
        "errors": sum(r["status"] == "error" for r in rows)}
    storage.write_json(sdir / "summary.json", summary)
    report_path = Path(storage.write_text(sdir / "report.html", build_sweep_report(spec, rows, best)))
    root = storage_root(cfg, spec)
    if storage.is_uri(root):
        for p in (table_path, best_path, report_path, sdir / "summary.json"):
            upload_result(p, f"{root.rstrip('/')}/{spec.name}/results")
    return SweepResult(sdir, table_path, best_path, report_path, best, rows)
