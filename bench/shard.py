"""Images/s of ``sslpipe shard`` on a nested tree of CIFAR-10 JPEGs: the old single process against Ray tasks.

Why this exists: issue #29 asks sharding to use the cluster rather than one core of the driver,
at >= 1.5x the old single process on 2 CPUs. Every run is the real command line
(``python -m pipelines.cli shard SRC DEST --shard-size 1000``) timed from start to exit, on the
same files, with every process pinned to the same ``--cpus`` cores:

- ``old``: the code before parallel sharding (commit ``BASELINE``, extracted with ``git archive``),
  one process. It reads only ``root/<class>/<file>``, so it gets the same files hard-linked two
  levels deep (``flat/<YYYY-MM-DD>/<n>.jpg``: same inodes, bytes, count and folder count);
- ``in-process``: today's code with ``--workers 0``: the same listing and writing functions as
  on Ray, called one after the other in the command's own process (no Ray);
- ``ray-1`` / ``ray-2``: today's code joining a Ray the bench started beforehand (``--address``,
  as on a cluster that is already up), with ``--workers 1`` / ``--workers 2``;
- ``ray-cold``: today's code starting its own local Ray (``--workers 2``): what a user's first
  command pays, Ray start included.

The tree (``YYYY/MM/DD/<n>.jpg``, 1,008 leaf folders) is built once in ``--work`` from
``SSLPIPE_CIFAR10`` (train + test, cycled to ``--files``, each file a copy) and read once before
timing, so every run reads from the page cache. Modes are interleaved over ``--rounds``; the
median wall time counts. The bench checks the outputs agree (same sample count everywhere, and
the same index for in-process and Ray). Prints JSON, then a table.

    python bench/shard.py [--files 100000] [--cpus 2] [--rounds 3] [--work /tmp/sslpipe-bench-shard]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: the last commit before sharding ran on Ray: the "old" single process
BASELINE = "8bf63d1e2c87cd8bf44917beb32fc0f24a9b801d"
MODES = ("old", "in-process", "ray-1", "ray-2", "ray-cold")
SHARD_SIZE = 1000


def cifar_files(root: Path) -> list[Path]:
    files = sorted(root.glob("train/*/*.jpg")) + sorted(root.glob("test/*/*.jpg"))
    if not files:
        raise SystemExit(f"no CIFAR-10 JPEGs under {root} (expected train|test/<class>/*.jpg); set SSLPIPE_CIFAR10")
    return files


def build_trees(work: Path, cifar: Path, n: int) -> tuple[Path, Path]:
    """``nested/YYYY/MM/DD/<i>.jpg`` (copies) and ``flat/<YYYY-MM-DD>/<i>.jpg`` (hard links to the same files)."""
    nested, flat = work / f"nested-{n}", work / f"flat-{n}"
    done = work / f"built-{n}"
    if done.exists():
        return nested, flat
    shutil.rmtree(nested, ignore_errors=True)
    shutil.rmtree(flat, ignore_errors=True)
    sources = cifar_files(cifar)
    leaves = [(y, m, d) for y in (2021, 2022, 2023) for m in range(1, 13) for d in range(1, 29)]
    for i in range(n):
        y, m, d = leaves[i % len(leaves)]
        target = nested / f"{y}" / f"{m:02d}" / f"{d:02d}" / f"{i:07d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sources[i % len(sources)], target)
        link = flat / f"{y}-{m:02d}-{d:02d}" / target.name
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(target, link)
        except OSError:
            shutil.copyfile(target, link)
    done.touch()
    return nested, flat


def read_all(tree: Path) -> int:
    """Read every file once, so the timed runs all read from the page cache."""
    total = 0
    for path in tree.rglob("*.jpg"):
        total += len(path.read_bytes())
    return total


def baseline_source(work: Path) -> Path:
    target = work / f"baseline-{BASELINE[:10]}"
    if not (target / "pipelines" / "cli.py").exists():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", BASELINE], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def run_cli(code: Path, src: Path, dest: Path, extra: list[str]) -> dict:
    shutil.rmtree(dest, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0"}
    cmd = [sys.executable, "-m", "pipelines.cli", "shard", str(src), str(dest), "--shard-size", str(SHARD_SIZE), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=code, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((dest / "summary.json").read_text())
    return {"wall_s": wall, "samples": summary["samples"], "inside": summary.get("this_run", {}).get("seconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--cpus", type=int, default=2, help="cores every process is pinned to")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sslpipe-bench-shard"))
    parser.add_argument("--cifar10", type=Path, default=Path(os.environ.get("SSLPIPE_CIFAR10", "")))
    args = parser.parse_args()

    cores = sorted(os.sched_getaffinity(0))[: args.cpus]
    os.sched_setaffinity(0, cores)  # inherited by every command and by the Ray the bench starts
    args.work.mkdir(parents=True, exist_ok=True)
    nested, flat = build_trees(args.work, args.cifar10, args.files)
    read_all(nested)
    old_code = baseline_source(args.work)

    import ray

    from pipelines.config import RayConfig
    from pipelines.ray_runtime import init_local_ray

    init_local_ray(RayConfig(num_cpus=len(cores)), address="local", include_dashboard=False)
    address = ray.get_runtime_context().gcs_address
    plans = {
        "old": (old_code, flat, []),
        "in-process": (REPO, nested, ["--workers", "0"]),
        "ray-1": (REPO, nested, ["--address", address, "--workers", "1"]),
        "ray-2": (REPO, nested, ["--address", address, "--workers", "2"]),
        "ray-cold": (REPO, nested, ["--workers", "2"]),
    }
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    try:
        for _ in range(args.rounds):
            for mode in MODES:
                code, src, extra = plans[mode]
                runs[mode].append(run_cli(code, src, args.work / f"out-{mode}", extra))
        import pyarrow.parquet as pq

        same_index = all(pq.read_table(args.work / f"out-{m}" / "index.parquet").drop_columns(["source"]).equals(
            pq.read_table(args.work / "out-in-process" / "index.parquet").drop_columns(["source"]))
            for m in ("ray-1", "ray-2", "ray-cold"))
    finally:
        ray.shutdown()
    samples = {r["samples"] for rs in runs.values() for r in rs}
    if samples != {args.files} or not same_index:
        raise SystemExit(f"outputs disagree: sample counts {samples}, same index in-process vs Ray: {same_index}")

    def median_wall(mode: str) -> float:
        return statistics.median(r["wall_s"] for r in runs[mode])

    result = {
        "files": args.files, "cpus": len(cores), "rounds": args.rounds, "baseline_commit": BASELINE,
        "cpu_model": _cpu_model(), "shard_size": SHARD_SIZE,
        "modes": {m: {"median_wall_s": round(median_wall(m), 3), "images_per_s": round(args.files / median_wall(m), 1),
                      "wall_s": [round(r["wall_s"], 3) for r in runs[m]], "inside_s": [r["inside"] for r in runs[m]]}
                  for m in MODES},
        "speedup_vs_old": {m: round(median_wall("old") / median_wall(m), 2) for m in MODES if m != "old"},
        "ray_2_vs_1_workers": round(median_wall("ray-1") / median_wall("ray-2"), 2),
    }
    print(json.dumps(result, indent=2))
    print(f"\n{args.files} files, {len(cores)} CPUs, median of {args.rounds}")
    print(f"{'mode':<12} {'wall s':>8} {'images/s':>10} {'vs old':>7}")
    for m in MODES:
        speed = "1.00x" if m == "old" else f"{result['speedup_vs_old'][m]:.2f}x"
        print(f"{m:<12} {result['modes'][m]['median_wall_s']:>8.2f} {result['modes'][m]['images_per_s']:>10.0f} "
              f"{speed:>7}")
    print(f"ray-2 vs ray-1: {result['ray_2_vs_1_workers']:.2f}x")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
