"""Where a sweep keeps things: trials and results on local disk (RUN_DIR/sweeps/NAME), Tune's experiment
locally or in object storage (the sweep file's ``storage_path``)."""

from __future__ import annotations

from pathlib import Path

import storage
from curation.errors import InputError
from pipelines.config import PipelineConfig
from pipelines.sweeps.space import SweepSpec


def sweep_dir(cfg: PipelineConfig, spec: SweepSpec) -> Path:
    """Local folder for trial checkpoints and results: RUN_DIR/sweeps/NAME (absolute: trials chdir).

    Trials append their start log and keep checkpoints on local disk, so a bucket run_dir is refused
    here (it would silently become a local folder named ``s3:``); Tune's own state may still go to a
    bucket through the sweep file's ``storage_path``."""
    if storage.is_uri(cfg.run_dir):
        raise InputError(f"sweeps keep their trials on local disk, so run_dir must be a local path, not "
                         f"{cfg.run_dir}; use a local run_dir and set storage_path: s3://... in the sweep file to "
                         "keep Tune's experiment in the bucket")
    return (Path(cfg.run_dir) / "sweeps" / spec.name).resolve()


def check_sweep_locations(cfg: PipelineConfig, spec: SweepSpec) -> None:
    """Before Ray starts or anything is deleted: no credentials inside any location (the command line may have
    overridden the base since load), and a bucket ``storage_path`` that can be written. Each failure is one
    InputError line naming the location masked and the fix, as ``sslpipe run`` does for its locations."""
    locations = (("data.source", cfg.data.source), ("eval.bank_source", cfg.eval.bank_source),
                 ("eval.query_source", cfg.eval.query_source), ("run_dir", cfg.run_dir),
                 ("storage_path", spec.storage_path))
    for _, location in locations:
        if location:
            storage.refuse_credentials(str(location))
    if spec.storage_path and storage.is_uri(spec.storage_path):
        storage.check_writable(spec.storage_path, "storage_path")


def storage_root(cfg: PipelineConfig, spec: SweepSpec) -> str:
    """Tune's storage_path: the spec's (local or cloud uri), else RUN_DIR/sweeps/NAME/tune."""
    if spec.storage_path:
        sp = spec.storage_path
        return sp if "://" in sp else str(Path(sp).resolve())
    return str(sweep_dir(cfg, spec) / "tune")


def experiment_path(cfg: PipelineConfig, spec: SweepSpec) -> str:
    """Where Tune keeps this sweep's experiment state (what ``--resume`` restores)."""
    return f"{storage_root(cfg, spec).rstrip('/')}/{spec.name}"


def remove_experiment(exp_path: str) -> None:
    """Delete Tune's experiment folder, local or in object storage (for --overwrite)."""
    storage.delete(exp_path)


def upload_result(local: Path, uri_dir: str) -> None:
    """Copy a result file next to the Tune experiment when that lives in object storage."""
    storage.put_file(local, storage.join(uri_dir, local.name))
