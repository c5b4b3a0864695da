"""Where the machine's CPU time went during a run: training workers, Ray's own processes, the rest.

On a small node Ray's fixed cost is not negligible: every Ray process (GCS, raylet, dashboard,
log monitor, and each actor, including the idle ones Ray Train and Ray Data start: controller,
placement-group cleaner, split coordinator, stats actor ...) wakes up many times a second. This
samples /proc (no psutil) in a background thread, so processes that start and exit inside the
window (Ray Train workers do) are still counted up to their last sample.
"""

from __future__ import annotations

import os
import threading
import time

#: process titles of the training processes themselves
TRAIN_TITLES = ("ray::RayTrainWorker",)


def _cpu_seconds_and_title(pid: str, tick: int) -> tuple[float, str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / tick, title  # utime + stime


def classify(title: str, pid: int, driver_pid: int) -> str:
    """``train`` (Ray Train workers), ``ray`` (every other Ray process), ``driver``, or ``other``."""
    if pid == driver_pid:
        return "driver"
    if title.startswith(TRAIN_TITLES):
        return "train"
    if title.startswith("ray::") or "/ray/" in title or "ray-dashboard" in title:
        return "ray"
    return "other"


class CpuSplit:
    """Context manager: CPU seconds per class of process between enter and exit.

    ``result()`` gives seconds per class, the wall seconds, the cores, and the share of the
    machine's capacity (cores x wall) each class used.
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.tick = os.sysconf("SC_CLK_TCK")
        self.first: dict[int, float] = {}
        self.last: dict[int, tuple[float, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.wall = 0.0

    def _sample(self, initial: bool) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            got = _cpu_seconds_and_title(entry, self.tick)
            if got is None:
                continue
            pid = int(entry)
            if pid not in self.last and initial:
                self.first[pid] = got[0]
            elif pid not in self.last:
                self.first[pid] = 0.0  # born inside the window: all its CPU time counts
            # keep the richest title seen (a Ray worker renames itself after start-up)
            title = got[1] if got[1] else self.last.get(pid, (0.0, ""))[1]
            self.last[pid] = (got[0], title)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample(initial=False)

    def __enter__(self) -> "CpuSplit":
        self._t0 = time.perf_counter()
        self._sample(initial=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(initial=False)
        self.wall = time.perf_counter() - self._t0

    def seconds_of(self, pid: int) -> float:
        """CPU seconds one process used inside the window (0 if never seen)."""
        if pid not in self.last:
            return 0.0
        return max(0.0, self.last[pid][0] - self.first.get(pid, self.last[pid][0]))

    def result(self) -> dict:
        seconds = {"train": 0.0, "ray": 0.0, "driver": 0.0, "other": 0.0}
        me = os.getpid()
        for pid, (_, title) in self.last.items():
            seconds[classify(title, pid, me)] += self.seconds_of(pid)
        cores = os.cpu_count() or 1
        capacity = cores * self.wall
        return {
            "wall_s": round(self.wall, 1),
            "cores": cores,
            "cpu_s": {k: round(v, 1) for k, v in seconds.items()},
            "share_of_machine": {k: round(v / capacity, 3) for k, v in seconds.items()} if capacity else {},
        }
