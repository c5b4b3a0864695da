"""``sslpipe run``: shard -> curate -> pretrain -> evaluate -> report, resumable.

Each finished stage writes ``stages/<name>.json`` (atomically) with what it
produced; ``resume=True`` skips the stages that have a record and pretraining
itself resumes from its latest checkpoint. A run directory that already holds
finished stages is never silently overwritten.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from curation.errors import InputError
from pipelines.atomic import write_json_atomic, write_text_atomic
from pipelines.config import RunConfig, config_to_dict
from pipelines.ray_runtime import ensure_ray

STAGES = ("pool", "curate", "pretrain", "evaluate", "report")


class RunDir:
    """The run directory and its stage records."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def record(self, stage: str) -> dict[str, Any] | None:
        p = self.path / "stages" / f"{stage}.json"
        return json.loads(p.read_text()) if p.exists() else None

    def save(self, stage: str, data: dict[str, Any]) -> None:
        write_json_atomic(data, self.path / "stages" / f"{stage}.json")


def prepare_run_dir(cfg: RunConfig, resume: bool, overwrite: bool) -> RunDir:
    run = RunDir(cfg.run_dir)
    has_stages = (run.path / "stages").is_dir() and any((run.path / "stages").glob("*.json"))
    if has_stages and overwrite:
        shutil.rmtree(run.path)
    elif has_stages and not resume:
        raise InputError(
            f"run directory {run.path} already holds a run; pass --resume to continue it, "
            f"--overwrite to start over, or run_dir=OTHER for a new one"
        )
    run.path.mkdir(parents=True, exist_ok=True)
    resolved = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    old = run.path / "config.yaml"
    if resume and old.exists() and old.read_text() != resolved:
        print(f"[run] note: config differs from the one in {old}; finished stages keep their old results", flush=True)
    write_text_atomic(resolved, old)
    return run


def _stage(run: RunDir, name: str, resume: bool, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    done = run.record(name) if resume else None
    if done is not None:
        print(f"[run] {name}: already done, skipping (resume)", flush=True)
        return done
    print(f"[run] ===== {name} =====", flush=True)
    t0 = time.time()
    data = fn()
    data.setdefault("seconds", round(time.time() - t0, 2))
    run.save(name, data)
    return data


def _partial_report(run_dir: Path) -> Path:
    """A job stopped early (``sslpipe curate``, ``sslpipe pretrain``) still gets its report: the
    curation plots (class histogram, cluster sizes before/after, removed duplicates next to what
    they duplicate) are what a curation-only user looks at."""
    from pipelines.report import build_report

    print(f"[run] report: {build_report(run_dir)}", flush=True)
    return run_dir


def run_pipeline(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False, until: str = "report") -> Path:
    """Run the chain up to and including ``until``; returns the run directory."""
    from pipelines.curate import curate
    from pipelines.evaluate import full_evaluation, load_labelled
    from pipelines.models import resolved_method_hparams
    from pipelines.pretrain import load_backbone, pretrain
    from pipelines.report import build_report
    from pipelines.sources import resolve_sources
    from curation.ingest import read_decoded

    if until not in STAGES:
        raise InputError(f"unknown stage {until!r}; choose one of {', '.join(STAGES)}")
    from curation.redact import refuse_credentials

    for uri in (cfg.data.source, cfg.data.eval_source, cfg.run_dir):
        if uri:  # before anything (config.yaml, stage records) could copy a secret to disk
            refuse_credentials(str(uri))
    t_run = time.time()
    run = prepare_run_dir(cfg, resume, overwrite)
    stop_after = STAGES.index(until)

    def pool() -> dict[str, Any]:
        shards, eval_shards = resolve_sources(cfg, run.path / "pool")
        return {"shards": shards, "eval_shards": eval_shards}

    pool_rec = _stage(run, "pool", resume, pool)  # before Ray starts: bad input fails fast
    if stop_after < 1:
        return run.path
    ensure_ray(cfg.ray)

    def do_curate() -> dict[str, Any]:
        res = curate(pool_rec["shards"], run.path / "curated", cfg.curate)
        return {"manifest": str(res.manifest_path), "shards": res.shard_paths, "summary": res.summary}

    cur_rec = _stage(run, "curate", resume, do_curate)
    if stop_after < 2:
        return _partial_report(run.path)

    def do_pretrain() -> dict[str, Any]:
        ds = read_decoded(cur_rec["shards"], cfg.data.image_size, cfg.data.channels).select_columns(["image", "label"])
        val = read_decoded(pool_rec["eval_shards"], cfg.data.image_size, cfg.data.channels).select_columns(["image", "label"])
        res = pretrain(cfg, ds, run.path, val_dataset=val)
        hist = res.history
        write_text_atomic("".join(json.dumps(h) + "\n" for h in hist), run.path / "metrics.jsonl")
        temperature = resolved_method_hparams(cfg).get("temperature")  # None: the method has none (BYOL, MAE, ...)
        desc = (
            f"{cfg.method.name} on {cfg.backbone.name}, {cfg.train.num_workers} Ray Train worker(s) "
            f"(DDP, gloo), global batch {cfg.train.batch_size}, {cfg.train.optimizer} lr {cfg.train.lr}, "
            + (f"temperature {temperature}, " if temperature is not None else "") + f"{cfg.train.precision}."
        )
        return {"checkpoint": str(res.checkpoint_path), "history": hist, "seconds": res.seconds, "description": desc}

    pt_rec = _stage(run, "pretrain", resume, do_pretrain)
    if stop_after < 3:
        return _partial_report(run.path)

    def do_evaluate() -> dict[str, Any]:
        bank = load_labelled(cur_rec["shards"], cfg)
        test = load_labelled(pool_rec["eval_shards"], cfg)
        backbone = load_backbone(cfg, pt_rec["checkpoint"])
        rep = full_evaluation(cfg, backbone, bank, test, run.path)
        knn = rep["knn_top1"]
        print(
            f"[evaluate] {rep['protocol']}: raw pixels {knn['raw_pixels']:.3f}  random init {knn['random_init']:.3f}"
            f"  pretrained {knn['pretrained']:.3f}  (gain {rep['gain_over_random_init'] * 100:+.1f} points)",
            flush=True,
        )
        return rep

    _stage(run, "evaluate", resume, do_evaluate)
    if stop_after < 4:
        return _partial_report(run.path)
    report = build_report(run.path)
    print(f"[run] done in {time.time() - t_run:.0f} s; report: {report}", flush=True)
    return run.path
