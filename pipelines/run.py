"""``sslpipe run``: shard -> curate -> pretrain -> evaluate -> report, resumable.

Each finished stage writes ``stages/<name>.json`` (atomically) with what it
produced; ``resume=True`` skips the stages that have a record and pretraining
itself resumes from its latest checkpoint. A run directory that already holds
finished stages is never silently overwritten.

The run directory is a local folder or an object-store uri (``s3://bucket/runs/x``):
everything the run keeps is written there through the storage layer, so a
multi-node cluster (and a later ``--resume`` from another machine) sees it all.
What must be local (plots before upload, a copy of the report to open) goes to
``storage.scratch_dir(run_dir)``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import yaml

import storage
from pipelines.console import say
from pipelines.config import PipelineConfig, config_to_dict
from pipelines.console import attach_run_log
from pipelines.ray_runtime import ensure_ray
from storage import InputError

STAGES = ("pool", "curate", "pretrain", "evaluate", "report")


class RunDir:
    """The run directory (local folder or object-store uri) and its stage records."""

    def __init__(self, location: str | Path) -> None:
        self.location = str(location)

    @property
    def remote(self) -> bool:
        return storage.is_uri(self.location)

    @property
    def path(self) -> Path | str:
        """A local run directory as a ``Path`` (as callers always got it); a uri as ``str``."""
        return self.location if self.remote else Path(self.location)

    def join(self, *parts: str) -> str:
        return storage.join(self.location, *parts)

    def record(self, stage: str) -> dict[str, Any] | None:
        p = self.join("stages", f"{stage}.json")
        return storage.read_json(p) if storage.is_file(p) else None

    def save(self, stage: str, data: dict[str, Any]) -> None:
        storage.write_json(self.join("stages", f"{stage}.json"), data)

    def has_stages(self) -> bool:
        return any(name.endswith(".json") for name in storage.list_dir(self.join("stages")))


def check_locations(cfg: PipelineConfig) -> None:
    """Refuse bad locations before anything is written or any compute is spent: credentials inside a uri,
    an object-store source that cannot be read or holds no shards, an object-store run_dir that cannot be
    written. Each failure is one InputError line naming the uri (masked) and the fix."""
    from pipelines.sources import list_uri_shards

    sources = (("data.source", cfg.data.source), ("eval.bank_source", cfg.eval.bank_source),
               ("eval.query_source", cfg.eval.query_source))
    for _, uri in (*sources, ("run_dir", cfg.run_dir)):
        if uri:  # before anything (config.yaml, stage records) could copy a secret to disk
            storage.refuse_credentials(str(uri))
    for setting, location in sources:
        if location and storage.is_uri(location):
            list_uri_shards(location, setting)
    storage.check_writable(cfg.run_dir, "run_dir")


def prepare_run_dir(cfg: PipelineConfig, resume: bool, overwrite: bool) -> RunDir:
    run = RunDir(cfg.run_dir)
    has_stages = run.has_stages()
    if has_stages and overwrite:
        storage.delete(run.location)
        if run.remote:  # the local copies that belonged to the old run
            shutil.rmtree(storage.scratch_dir(run.location), ignore_errors=True)
    elif has_stages and not resume:
        raise InputError(
            f"run directory {run.location} already holds a run; pass --resume to continue it, "
            f"--overwrite to start over, or run_dir=OTHER for a new one"
        )
    if not run.remote:
        Path(run.location).mkdir(parents=True, exist_ok=True)
    resolved = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    old = run.join("config.yaml")
    if resume and storage.is_file(old) and storage.read_text(old) != resolved:
        say(f"[run] note: config differs from the one in {old}; finished stages keep their old results")
    storage.write_text(old, resolved)
    return run


def _stage(run: RunDir, name: str, resume: bool, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    done = run.record(name) if resume else None
    if done is not None:
        say(f"[run] {name}: already done, skipping (resume)")
        return done
    say(f"[run] ===== {name} =====")
    t0 = time.time()
    data = fn()
    data.setdefault("seconds", round(time.time() - t0, 2))
    run.save(name, data)
    return data


def _report(run: RunDir) -> str:
    """Build the report; where it is, with the local copy to open when the run directory is a bucket."""
    from pipelines.report import build_report

    local = build_report(run.location)
    return f"{run.join('report.html')} (local copy: {local})" if run.remote else str(local)


def _partial_report(run: RunDir) -> Path | str:
    """A job stopped early (``sslpipe curate``, ``sslpipe pretrain``) still gets its report: the
    curation plots (class histogram, cluster sizes before/after, removed duplicates next to what
    they duplicate) are what a curation-only user looks at."""
    say(f"[run] report: {_report(run)}")
    return run.path


def run_pipeline(cfg: PipelineConfig, *, resume: bool = False, overwrite: bool = False, until: str = "report") -> Path | str:
    """Run the chain up to and including ``until``; returns the run directory (a ``Path``, or the uri).

    Each stage's work is its own function below; this one only orders them, stops after ``until``
    and starts Ray once the pool is known (bad input fails before Ray starts)."""
    from pipelines.eval_sets import index_eval_sets

    if until not in STAGES:
        raise InputError(f"unknown stage {until!r}; choose one of {', '.join(STAGES)}")
    check_locations(cfg)
    t_run = time.time()
    run = prepare_run_dir(cfg, resume, overwrite)
    attach_run_log(run.path)  # the CLI's quiet console: Ray's and the libraries' logs go to RUN_DIR/run.log
    stop_after = STAGES.index(until)

    pool_rec = _stage(run, "pool", resume, lambda: _pool_stage(cfg, run))  # before Ray starts: bad input fails fast
    if stop_after < 1:
        return run.path
    ensure_ray(cfg.ray)
    # the whole labelled evaluation set's keys and labels: checked (labels present) before any curation
    labelled = index_eval_sets(cfg, pool_rec) if (run.record("pretrain") is None or not resume) else None

    cur_rec = _stage(run, "curate", resume, lambda: _curate_stage(cfg, run, pool_rec))
    if stop_after < 2:
        return _partial_report(run)
    pt_rec = _stage(run, "pretrain", resume, lambda: _pretrain_stage(cfg, run, pool_rec, cur_rec, labelled))
    if stop_after < 3:
        return _partial_report(run)
    _stage(run, "evaluate", resume, lambda: _evaluate_stage(cfg, run, pool_rec, cur_rec, pt_rec))
    if stop_after < 4:
        return _partial_report(run)
    report = _report(run)
    say(f"[run] done in {time.time() - t_run:.0f} s; report: {report}")
    return run.path


def _pool_stage(cfg: PipelineConfig, run: RunDir) -> dict[str, Any]:
    """The pool's shards and the labelled bank/query shards: resolved (and checked) before Ray starts."""
    from pipelines.eval_sets import resolve_eval_sets
    from pipelines.sources import resolve_sources

    shards, demo_queries = resolve_sources(cfg, run.join("pool"))
    sets = resolve_eval_sets(cfg, run.join("pool"), demo_queries, shards)
    return {"shards": shards, "bank_shards": sets.bank, "query_shards": sets.queries}


def _curate_stage(cfg: PipelineConfig, run: RunDir, pool_rec: dict[str, Any]) -> dict[str, Any]:
    """Curate the pool into ``RUN_DIR/curated``; the record keeps the manifest, shards and summary."""
    from pipelines.curate import curate

    res = curate(pool_rec["shards"], run.join("curated"), cfg.curate, seed=cfg.seed, intensity=cfg.data.intensity)
    return {"manifest": str(res.manifest_path), "shards": res.shard_paths, "summary": res.summary}


def _pretrain_stage(cfg: PipelineConfig, run: RunDir, pool_rec: dict[str, Any], cur_rec: dict[str, Any],
                    labelled: dict[str, Any] | None) -> dict[str, Any]:
    """Pretrain on the curated pool, write metrics.jsonl, and describe the setup in one line for the report."""
    from pipelines.feed import ShardPool
    from pipelines.models import resolved_method_hparams
    from pipelines.monitor import monitor_sets_for_run
    from pipelines.pretrain import pretrain

    pool = ShardPool.from_manifest(cur_rec["manifest"], cur_rec["shards"])  # kept samples per curated shard
    res = pretrain(cfg, pool, run.location, monitor_sets_for_run(cfg, pool_rec, cur_rec, labelled))
    hist = res.history
    storage.write_text(run.join("metrics.jsonl"), "".join(json.dumps(h) + "\n" for h in hist))
    temperature = resolved_method_hparams(cfg).get("temperature")  # None: the method has none (BYOL, MAE, ...)
    t = cfg.train
    desc = (
        f"{cfg.method.name} on {cfg.backbone.name}, {t.num_workers} Ray Train worker(s) "
        f"(DDP, {'nccl' if t.use_gpu else 'gloo'}), global batch {t.batch_size}, {t.optimizer} lr {t.lr}, "
        + (f"temperature {temperature}, " if temperature is not None else "") + f"{t.precision}."
    )
    return {"checkpoint": str(res.checkpoint_path), "history": hist, "seconds": res.seconds, "description": desc}


def _evaluate_stage(cfg: PipelineConfig, run: RunDir, pool_rec: dict[str, Any], cur_rec: dict[str, Any],
                    pt_rec: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the pretrained backbone: the labelled protocol where there are labelled queries, then label-free."""
    from pipelines.eval_stage import full_evaluation, label_free_evaluation, load_labelled
    from pipelines.pretrain import load_backbone

    backbone = load_backbone(cfg, pt_rec["checkpoint"])
    rep: dict[str, Any] = {}
    if pool_rec.get("query_shards"):
        bank = load_labelled(pool_rec["bank_shards"], cfg)
        test = load_labelled(pool_rec["query_shards"], cfg)
        # plots are drawn into a local folder; a bucket run directory then keeps its own copy
        rep = full_evaluation(cfg, backbone, bank, test, storage.scratch_dir(run.location) if run.remote else run.path)
        if run.remote and rep.get("embedding_plot"):
            rep["embedding_plot"] = storage.put_file(rep["embedding_plot"], run.join(Path(rep["embedding_plot"]).name))
        knn = rep["knn_top1"]
        say(
            f"[evaluate] {rep['protocol']}: raw pixels {knn['raw_pixels']:.3f}  random init {knn['random_init']:.3f}"
            f"  pretrained {knn['pretrained']:.3f}  (gain {rep['gain_over_random_init'] * 100:+.1f} points)"
        )
    free = label_free_evaluation(cfg, backbone, cur_rec)
    if free is not None:
        rep["label_free"] = free
        p, r = free["pretrained"], free["random_init"]
        say(f"[evaluate] label-free on {free['sample_size']} pool images: RankMe {p['rankme']:.1f} (random init "
            f"{r['rankme']:.1f}), alignment {p['alignment']:.3f}, uniformity {p['uniformity']:.3f}, "
            f"feature std {p['feature_std']:.3f}")
    return rep
