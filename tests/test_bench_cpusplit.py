"""bench/cpusplit.py counts CPU time of processes that start and exit inside the window."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _cpusplit():
    spec = importlib.util.spec_from_file_location("bench_cpusplit", REPO / "bench" / "cpusplit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6:\n    pass\n"


def test_a_child_that_exits_inside_the_window_is_still_counted() -> None:
    cpusplit = _cpusplit()
    with cpusplit.CpuSplit(interval_s=0.05) as split:
        child = subprocess.Popen([sys.executable, "-c", BURN])
        assert child.wait() == 0
    result = split.result()
    assert split.seconds_of(child.pid) >= 0.45  # 0.6 s burnt; at most one sampling interval missed
    assert result["cpu_s"]["other"] >= split.seconds_of(child.pid) - 0.05  # result() rounds to 0.1 s
    assert sum(result["cpu_s"].values()) <= result["wall_s"] * result["cores"] + 0.5
    assert set(result["share_of_machine"]) == {"train", "ray", "driver", "other"}


def test_processes_are_classified_by_their_ray_title() -> None:
    classify = _cpusplit().classify
    assert classify("ray::RayTrainWorker", 11, driver_pid=10) == "train"
    assert classify("ray::SplitCoordinator", 12, driver_pid=10) == "ray"
    assert classify("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --x", 13, driver_pid=10) == "ray"
    assert classify("python bench/quality.py", 10, driver_pid=10) == "driver"
    assert classify("/usr/sbin/sshd", 14, driver_pid=10) == "other"
