"""Run the listing and writing steps of ``sslpipe shard`` as Ray tasks across the cluster, or in this process.

The steps are plain functions of their arguments (``pipelines.shard_listing``,
``pipelines.shard_writer``); this module only decides where they run. With Ray each call
is a task of one CPU, scheduled on any node, at most ``workers`` at a time (default: as
many as the cluster has CPUs). ``workers=0`` runs the very same calls one after the other
in this process, with no Ray at all: for tiny inputs, and to measure what Ray adds.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

from pipelines.config import RayConfig


class TaskRunner:
    """Maps a function over argument tuples, results in call order."""

    def __init__(self, workers: int | None = None, ray_config: RayConfig | None = None) -> None:
        """``workers``: 0 = in this process; None = as many tasks as Ray runs at once; N = at most N.
        ``ray_config``: start or join Ray with it when no Ray is running (None: use Ray only if the
        caller already started it, else run in this process)."""
        if workers is not None and workers < 0:
            raise ValueError("workers must be >= 0")
        self.workers = workers
        self.ray_config = ray_config
        self._remote: dict[Callable[..., Any], Any] = {}
        #: seconds spent starting or joining Ray (0 when it was already running or is not used)
        self.start_seconds = 0.0

    @property
    def uses_ray(self) -> bool:
        import ray

        return self.workers != 0 and (ray.is_initialized() or self.ray_config is not None)

    def start(self) -> None:
        """Start or join Ray if this runner uses it and none is running (only when there is work for it)."""
        import ray

        if self.uses_ray and not ray.is_initialized():
            from pipelines.ray_runtime import ensure_ray, init_local_ray

            cfg = self.ray_config or RayConfig()
            began = time.perf_counter()
            if cfg.address or os.environ.get("RAY_ADDRESS"):
                ensure_ray(cfg)
            else:
                # ensure_ray's local Ray, but always a new one: a bare ray.init() would join a cluster that
                # a local `ray start` left running (and fail on num_cpus)
                init_local_ray(cfg, address="local")
            self.start_seconds = time.perf_counter() - began

    def parallelism(self) -> int:
        """How many calls can run at once: what the listing is split for."""
        if not self.uses_ray:
            return 1
        import ray

        self.start()
        cpus = int(ray.cluster_resources().get("CPU", 1))
        return max(1, min(self.workers, cpus) if self.workers else cpus)

    def nodes(self) -> int:
        import ray

        return len([n for n in ray.nodes() if n.get("Alive")]) if self.uses_ray and ray.is_initialized() else 1

    def put(self, value: Any) -> Any:
        """Share a large argument once (the Ray object store; tasks map it without a copy), or pass it as it is."""
        if not self.uses_ray:
            return value
        import ray

        self.start()
        return ray.put(value)

    def map(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]],
            on_done: Callable[[int], None] | None = None) -> list[Any]:
        """``[fn(*args) for args in calls]``, as Ray tasks when this runner uses Ray.

        ``on_done(n)`` is called as results arrive with the number finished so far (progress).
        """
        if not calls:
            return []
        if not self.uses_ray:
            results = []
            for args in calls:
                results.append(fn(*args))
                if on_done:
                    on_done(len(results))
            return results
        import ray

        self.start()
        remote = self._remote.get(fn)
        if remote is None:
            # SPREAD: listing and writing are I/O-bound, and short next to a worker's start-up, so the default
            # policy would queue them all on the driver's node while the other nodes' disks and links idle
            remote = self._remote[fn] = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(fn)
        refs: list[Any] = []
        pending: list[Any] = []
        finished = 0
        for args in calls:
            if self.workers and len(pending) >= self.workers:
                done, pending = ray.wait(pending, num_returns=1)
                finished += len(done)
                if on_done:
                    on_done(finished)
            ref = remote.remote(*args)
            refs.append(ref)
            pending.append(ref)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            finished += len(done)
            if on_done:
                on_done(finished)
        return ray.get(refs)
