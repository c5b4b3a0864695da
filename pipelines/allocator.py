"""Which C heap allocator the Ray Train workers run under (``train.allocator``).

Why this matters on CPU: glibc's malloc serves large allocations (above its mmap threshold, 32 MiB at the
most) with a fresh ``mmap`` and gives them back with ``munmap`` on free, and trims its heap back to the
kernel, while a ResNet-18 CIFAR step allocates and frees dozens of large activation tensors. Each step
then pays for minor page faults on all of them (the kernel zeroing the same memory again), a visible share
of a CPU step (figures: docs/BENCHMARKS.md, ``bench/allocator.py``). A caching allocator keeps
the freed pages and the faults disappear. PyTorch's own CPU launcher (``torch.backends.xeon.run_cpu``) and
Intel's tuning guide do the same, in the same order of preference: tcmalloc, then jemalloc.

The allocator has to be in place before the process starts, so it is chosen here, on the driver, and
handed to Ray Train as ``LD_PRELOAD`` in the workers' runtime environment. The driver looks for the
library where its own packages live; nodes of a cluster get it from ``cluster.yaml``'s setup commands. A
node that lacks it starts its workers under the system malloc anyway (``ld.so`` prints a warning), and rank
0's ``[pretrain] ... malloc:`` line reports what the workers really run under.
"""

from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass
from typing import Literal

AllocatorName = Literal["auto", "tcmalloc", "jemalloc", "system"]

#: library file patterns per allocator, most specific first (tcmalloc_minimal has no profiler to load)
_PATTERNS: dict[str, tuple[str, ...]] = {
    "tcmalloc": ("libtcmalloc_minimal.so.[0-9]*", "libtcmalloc.so.[0-9]*"),
    "jemalloc": ("libjemalloc.so.[0-9]*",),
}
#: how to install each one on Debian/Ubuntu (the error message's fix)
INSTALL_HINT: dict[str, str] = {
    "tcmalloc": "apt-get install libtcmalloc-minimal4 (or conda install gperftools)",
    "jemalloc": "apt-get install libjemalloc2 (or conda install jemalloc)",
}
#: settings that keep each allocator quiet and caching
_ENV: dict[str, dict[str, str]] = {
    # tcmalloc prints a line for every allocation above 1 GiB by default
    "tcmalloc": {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)},
    # never hand freed pages back: without this jemalloc faults as much as glibc (bench/allocator.py)
    "jemalloc": {"MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"},
}


@dataclass(frozen=True)
class Allocator:
    """The chosen allocator: its name and the environment a process needs to run under it."""

    name: str
    library: str | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment variables for a process started under this allocator (empty for the system one)."""
        if self.library is None:
            return {}
        return {"LD_PRELOAD": self.library, **_ENV[self.name]}


def library_dirs() -> list[str]:
    """Where to look: this Python's and conda's lib folders first, then the system's."""
    dirs = [os.path.join(sys.prefix, "lib"), os.path.join(sys.base_prefix, "lib")]
    if os.environ.get("CONDA_PREFIX"):
        dirs.append(os.path.join(os.environ["CONDA_PREFIX"], "lib"))
    dirs += ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
             "/usr/local/lib", "/lib/x86_64-linux-gnu", "/lib64"]
    return list(dict.fromkeys(dirs))


def find_library(name: str, dirs: list[str] | None = None) -> str | None:
    """Absolute path of ``name``'s shared library (``tcmalloc`` or ``jemalloc``), or None if absent."""
    for pattern in _PATTERNS[name]:
        for directory in dirs if dirs is not None else library_dirs():
            hits = sorted(p for p in glob.glob(os.path.join(directory, pattern)) if os.path.isfile(p))
            if hits:
                return hits[0]
    return None


def resolve_allocator(requested: AllocatorName, dirs: list[str] | None = None) -> Allocator:
    """The allocator to run workers under.

    ``auto`` takes tcmalloc, else jemalloc, else the system's malloc (training still works, only slower
    on CPU). Naming one that is not installed is an error with the install command, not a silent fallback.
    """
    if requested == "system":
        return Allocator("system")
    candidates = ("tcmalloc", "jemalloc") if requested == "auto" else (requested,)
    for name in candidates:
        library = find_library(name, dirs)
        if library is not None:
            return Allocator(name, library)
    if requested == "auto":
        return Allocator("system")
    from curation.errors import InputError

    searched = ", ".join(dirs if dirs is not None else library_dirs())
    raise InputError(
        f"train.allocator: {requested} was not found (looked in {searched}); "
        f"install it with `{INSTALL_HINT[requested]}`, or set train.allocator=auto to use it where present"
    )


def allocator_in_use() -> str:
    """Which allocator this process actually runs under, read from its own memory map (for the logs)."""
    try:
        with open("/proc/self/maps") as maps:
            text = maps.read()
    except OSError:  # not Linux
        return "unknown"
    for name in ("tcmalloc", "jemalloc"):
        if f"lib{name}" in text:
            return name
    return "system"


def run_under(allocator: Allocator) -> None:
    """Re-execute this script under ``allocator`` unless it already runs under it (benchmarks use this so a
    plain-torch baseline and Ray Train workers are timed under the same malloc)."""
    if allocator.library is None or allocator_in_use() == allocator.name:
        return
    env = {**os.environ, **allocator.env}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)
