"""Start or join Ray with settings that work on a laptop and on a cluster.

Locally we give Ray 2x the physical cores as logical CPUs: train workers hold
their CPUs for the whole run, and on a 2-core machine Ray Data's read tasks
would otherwise never get one and the job would hang. The dashboard listens
on 127.0.0.1 only unless ``ray.dashboard_host`` says otherwise.

A Ray we start ourselves is one node, and on a small node Ray's own idle
processes are a measurable tax: every Ray worker process, busy or not, wakes
every 10 ms for its signal check (hard-coded in Ray's core worker) and costs
about 1 % of a core doing so (``bench/ray_tax.py``). So a local Ray drops the
idle processes that buy nothing on one node: Ray Train's preemption watcher
(it polls for spot-instance preemption, which a local Ray cannot have) and
pooled task workers that have sat idle for 10 s (Ray keeps up to one per
logical CPU forever by default). Joining a cluster changes none of this.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from pipelines.config import RayConfig

#: Ray system settings for a Ray we start: reap pooled workers idle for 10 s (Ray's default
#: keeps one per logical CPU for ever; a pipeline stage restarts a worker in about a second)
LOCAL_SYSTEM_CONFIG: dict[str, int] = {"num_workers_soft_limit": 0, "idle_worker_killing_time_threshold_ms": 10_000}
#: environment defaults for a Ray we start (a value the user exported wins): no preemption
#: watcher actor, since one local node has no preemptible peers to watch
LOCAL_ENV_DEFAULTS: dict[str, str] = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def local_ray_init_kwargs(cfg: RayConfig) -> dict[str, Any]:
    """The ``ray.init`` arguments for a local Ray, after setting ``LOCAL_ENV_DEFAULTS``.

    The environment must be set before ``ray.init``: Ray's processes inherit it from here.
    """
    for key, value in LOCAL_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    return dict(
        num_cpus=cfg.num_cpus or 2 * (os.cpu_count() or 1),
        # the dashboard process also serves the State API, which Ray Train's placement-group
        # cleaner needs (without it Train + Tune runs leak placement groups); 127.0.0.1 only
        include_dashboard=True,
        dashboard_host=cfg.dashboard_host,
        logging_level=logging.WARNING,
        _system_config=dict(LOCAL_SYSTEM_CONFIG),
    )


def ensure_ray(cfg: RayConfig) -> None:
    """Connect to ``cfg.address`` / ``RAY_ADDRESS`` if given, else start a local Ray (idempotent)."""
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    ray.init(**local_ray_init_kwargs(cfg))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
