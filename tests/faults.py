"""Fault injection for tests: find the real Ray worker process running a given task and SIGKILL it.

Ray names a busy worker process ``ray::<task or actor name>``; reading ``/proc`` finds the one we
want among the children of *our* raylet (other Ray instances may run on the same machine), with no
sleeping-to-pass: the watcher polls until the process exists, kills it once, and records the pid so
the test can assert the fault really happened.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable


def child_pids(parent: int) -> list[int]:
    """Pids whose parent is ``parent`` (Linux /proc; no psutil needed)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            out.append(int(entry))
    return out


def process_title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def find_worker(raylet_pids: Iterable[int], title_part: str | tuple[str, ...]) -> int | None:
    """The pid of a worker under one of ``raylet_pids`` whose title contains ``title_part`` (or one of them)."""
    parts = (title_part,) if isinstance(title_part, str) else title_part
    for raylet in raylet_pids:
        for pid in child_pids(raylet):
            title = process_title(pid)
            if title.startswith("ray::") and any(p in title for p in parts):
                return pid
    return None


def session_raylet_pid() -> int:
    """The raylet of the Ray this process started (``ray.init(address="local")``)."""
    import ray

    node = ray._private.worker._global_node
    return node.all_processes["raylet"][0].process.pid


def kill_when_running(
    raylet_pids: Callable[[], Iterable[int]] | Iterable[int],
    title_part: str | tuple[str, ...],
    killed: list[int],
    deadline_s: float = 300,
    action: Callable[[int], None] | None = None,
) -> None:
    """Wait for a worker running ``title_part``; SIGKILL it (or call ``action(pid)``) once; record the pid."""
    end = time.time() + deadline_s
    while time.time() < end:
        pids = raylet_pids() if callable(raylet_pids) else raylet_pids
        pid = find_worker(pids, title_part)
        if pid is not None:
            if action is None:
                os.kill(pid, signal.SIGKILL)
            else:
                action(pid)
            killed.append(pid)
            return
        time.sleep(0.02)
