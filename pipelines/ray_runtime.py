"""Start or join Ray with settings that work on a laptop and on a cluster.

Locally we give Ray 2x the physical cores as logical CPUs: train workers hold
their CPUs for the whole run, and on a 2-core machine Ray Data's read tasks
would otherwise never get one and the job would hang. The dashboard listens
on 127.0.0.1 only unless ``ray.dashboard_host`` says otherwise.
"""

from __future__ import annotations

import logging
import os

import ray

from pipelines.config import RayConfig


def ensure_ray(cfg: RayConfig) -> None:
    """Connect to ``cfg.address`` / ``RAY_ADDRESS`` if given, else start a local Ray (idempotent)."""
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    ray.init(
        num_cpus=cfg.num_cpus or 2 * (os.cpu_count() or 1),
        # the dashboard process also serves the State API, which Ray Train's placement-group
        # cleaner needs (without it Train + Tune runs leak placement groups); 127.0.0.1 only
        include_dashboard=True,
        dashboard_host=cfg.dashboard_host,
        logging_level=logging.WARNING,
    )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
