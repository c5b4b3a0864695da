"""Start or join Ray with settings that work on a laptop and on a cluster.

Locally we give Ray 2x the physical cores as logical CPUs: train workers hold
their CPUs for the whole run, and on a node with few cores Ray Data's read tasks
would otherwise never get one and the job would hang. The dashboard listens
on 127.0.0.1 only unless ``ray.dashboard_host`` says otherwise.

A Ray we start ourselves is one node, and on a small node Ray's own idle
processes are a measurable tax: every Ray worker process, busy or not, wakes
every 10 ms for its signal check (hard-coded in Ray's core worker), which costs
CPU beside training (figures: docs/BENCHMARKS.md, ``bench/ray_tax.py``). So a local Ray drops the
idle processes that buy nothing on one node: Ray Train's preemption watcher
(it polls for spot-instance preemption, which a local Ray cannot have) and
pooled task workers that have sat idle for 10 s (Ray keeps up to one per
logical CPU forever by default). Joining a cluster changes none of this.

On Linux a local Ray also runs under ``SCHED_BATCH``, the kernel's policy for
non-interactive throughput work: a waking batch thread does not preempt the one
running, so Ray's many short wake-ups wait for the end of the current time slice
instead of cutting into the training threads' convolutions. Ray's processes
inherit the policy from the thread that starts them (``init_local_ray`` sets it
for that call only and gives the caller's thread its own policy back). Beside a
training step on a small node this makes the step preempted less often and trims
Ray's CPU share; the throughput it wins back is inside the noise of
``bench/ray_tax.py`` (figures: docs/BENCHMARKS.md). It also keeps a
local job from preempting the user's interactive programs. ``ray.local_scheduling:
normal`` turns it off.

Under the CLI's quiet console (``pipelines/console.py``), Ray starts with a worker setup hook that tags
sslpipe's warnings in workers, logs its own INFO lines to the run log, and the driver's printing of
forwarded worker output is replaced by a router (sslpipe's lines to the terminal, the rest to the log).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray

from pipelines.config import RayConfig
from pipelines.console import ray_init_options, route_ray_output

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


@contextmanager
def scheduling_policy(policy: str) -> Iterator[bool]:
    """Run the block with the calling thread under ``policy`` (``batch`` or ``normal``).

    Processes started inside the block keep the policy (Linux passes it on through fork and
    exec); the thread gets its own policy back afterwards, so a library caller's process is
    left as it was. Yields whether the policy was applied: off Linux, or where the kernel
    refuses, the block runs unchanged.
    """
    target: int | None = {"batch": getattr(os, "SCHED_BATCH", None), "normal": getattr(os, "SCHED_OTHER", None)}[policy]
    try:
        previous = os.sched_getscheduler(0) if target is not None else None
    except OSError:
        previous = None
    if target is None or previous is None or previous == target:
        yield previous == target
        return
    try:
        os.sched_setscheduler(0, target, os.sched_param(0))
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        os.sched_setscheduler(0, previous, os.sched_param(0))


def init_local_ray(cfg: RayConfig, **overrides: Any) -> None:
    """Start a local Ray (``local_ray_init_kwargs`` plus ``overrides``) under ``cfg.local_scheduling``."""
    with scheduling_policy(cfg.local_scheduling):
        ray.init(**{**local_ray_init_kwargs(cfg), **overrides})


def ensure_ray(cfg: RayConfig) -> None:
    """Connect to ``cfg.address`` / ``RAY_ADDRESS`` if given, else start a local Ray (idempotent)."""
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    console = ray_init_options()  # the CLI's quiet console: Ray's logs to the run log, not the terminal
    if address:
        ray.init(**{"address": address, "logging_level": logging.WARNING, **console})
    else:
        init_local_ray(cfg, address="local", **console)  # a new local Ray, never one that `ray start` left running
        ray.data.DataContext.get_current().enable_progress_bars = True
    route_ray_output()
