"""bench/ray_tax.py's parts on real processes: the training stepper and the Ray process count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "ray_tax.py"


def test_stepper_times_real_training_steps() -> None:
    """The stepper trains (loss.backward + SGD) and reports each step's seconds as JSON."""
    out = subprocess.run([sys.executable, str(BENCH), "--stepper", "--seconds", "0.5", "--batch", "2",
                          "--precision", "fp32"], capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["precision"] == "fp32"
    assert len(report["step_s"]) >= 1 and all(t > 0 for t in report["step_s"])
    assert report["preempted_per_s"] >= 0


def test_involuntary_switches_counts_this_process() -> None:
    """The preemption counter reads a real, non-decreasing figure from /proc."""
    sys.path.insert(0, str(BENCH.parent.parent))
    from bench.ray_tax import involuntary_switches

    first = involuntary_switches()
    assert isinstance(first, int) and involuntary_switches() >= first >= 0


def test_ray_pids_finds_the_running_rays_processes(ray_session) -> None:
    """An actor's process and Ray's daemons are counted as Ray's; this test process is not."""
    import os

    sys.path.insert(0, str(BENCH.parent.parent))
    from bench.ray_tax import ray_pids

    @ray_session.remote(num_cpus=0)
    class Idle:
        def pid(self) -> int:
            return os.getpid()

    actor = Idle.remote()
    try:
        pid = ray_session.get(actor.pid.remote())
        found = ray_pids()
        assert pid in found and os.getpid() not in found
        assert len(found) >= 5  # gcs_server, raylet, dashboard, log monitor and the actor at least
    finally:
        ray_session.kill(actor)
