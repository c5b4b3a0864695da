"""Memory of a whole process tree (driver + Ray's processes) from /proc, for the benchmarks (no psutil)."""

from __future__ import annotations

import os



def _pss_bytes(pid: int, fallback: int) -> int:
    """Proportional set size: shared pages (Ray's object store is one shared mapping that the
    raylet, every worker and the driver touch) counted once in total, not once per process."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return fallback


def tree_pss_bytes(root: int, by_title: dict[str, int] | None = None) -> int:
    """PSS (else RSS) of ``root`` and all its descendants; per process title too if ``by_title`` is given."""
    page = os.sysconf("SC_PAGE_SIZE")
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ppid, pages = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages * page
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        if pid in rss:
            pss = _pss_bytes(pid, rss[pid])
            total += pss
            if by_title is not None:
                title = _title(pid)
                by_title[title] = by_title.get(title, 0) + pss
        stack.extend(children.get(pid, []))
    return total


def _title(pid: int) -> str:
    """A short process name: ``ray::<task>``, or the basename of the program (python: its script)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return "?"
    if not argv:
        return "?"
    if argv[0].startswith("ray::"):
        return argv[0].split()[0]
    prog = os.path.basename(argv[0])
    if prog.startswith("python"):
        script = next((a for a in argv[1:] if not a.startswith("-")), "")
        return f"python {os.path.basename(script)}".strip()
    return prog
