"""Ingest benchmark: streaming memory at 10k / 100k / 1M images, and view throughput vs a DataLoader.

Input: CIFAR-10 JPEGs from ``SSLPIPE_CIFAR10`` (``train|test/<class>/NNNN.jpg``).
The 50k training images are written once into webdataset shards in a temp
directory, repeated with new keys (``r<rep>_<class>_<file>``) up to the largest
N; smaller N read a prefix of the same shards.

Two measurements, each in a fresh subprocess so memory is per measurement:

* ``stream``: ``read_decoded`` (tolerant tar reader -> PIL decode to 32 px, a
  Ray Data pipeline: the training feed) drained by the driver; images/s and
  the peak memory summed over the whole process tree (driver, raylet, Ray
  workers), sampled every 0.2 s, as PSS so the shared object-store mapping
  counts once (a plain RSS sum counts it once per process that touched it). Bounded memory means peak(1M) <= 1.2 x
  peak(10k).
* ``views``: decode + two SimCLR views at 32 px. Ours: ``read_decoded`` then
  ``augment_batch`` twice per batch of 256 (per-sample parameters, batched
  pixels), as ``pipelines/pretrain.py`` does. Baseline, same run, same CPUs:
  a torch ``DataLoader`` with 2 workers over the same shards, PIL decode and
  ``torchvision_recipe(recipe)`` applied per sample twice. Prints both rates
  and their ratio, in steady state: each clock starts at its first batch, so
  Ray's pipeline start-up (a few seconds, once per training run) and the
  DataLoader's worker start-up are left out of both.

Prints one JSON object, then a table.

    nice -n 10 python bench/ingest.py --sizes 10000,100000
    nice -n 10 python bench/ingest.py --sizes 10000,100000,1000000
    python bench/ingest.py --quick
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHARD_SIZE = 1000


from procmem import tree_pss_bytes as _tree_rss_bytes  # noqa: E402  (the script's folder is on sys.path)


class PeakRSS:
    """Samples the process tree's RSS in a thread; ``peak`` is the largest sum seen."""

    def __init__(self, interval: float = 0.2) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss_bytes(os.getpid()))
            self._stop.wait(interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _tree_rss_bytes(os.getpid()))


def make_shards(cifar: Path, out: Path, n: int) -> list[str]:
    """Shards of ``n`` samples cycling through the CIFAR-10 train JPEGs with fresh keys (reused if present)."""
    from curation.shards import Sample, write_shard

    files = sorted((cifar / "train").glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"no JPEGs under {cifar}/train/<class>/ (set SSLPIPE_CIFAR10)")
    classes = sorted({f.parent.name for f in files})
    n_shards = -(-n // SHARD_SIZE)
    paths = [out / f"shard-{i:06d}.tar" for i in range(n_shards)]
    if all(p.exists() for p in paths):
        return [str(p) for p in paths]
    base = [(f.read_bytes(), classes.index(f.parent.name), f"{f.parent.name}_{f.stem}") for f in files]
    for i, path in enumerate(paths):
        if path.exists():
            continue
        samples = []
        for j in range(i * SHARD_SIZE, min(n, (i + 1) * SHARD_SIZE)):
            data, label, key = base[j % len(base)]
            samples.append(Sample(f"r{j // len(base):03d}_{key}", data, "jpg", label))
        write_shard(samples, path)
    return [str(p) for p in paths]


#: Ray's object store is one shared mapping whose pages stay resident once touched, so the
#: tree's memory grows until the store is full: a small store makes "bounded" reach its plateau
#: within the 10k run, and Ray Data's backpressure keeps the stream inside it. ``read_decoded``
#: makes one ~3 MB block per 1000-image shard, so 160 MiB holds dozens without spilling (before
#: issue #3's fix one task decoded all shards into 128 MiB blocks: spill workers at 50k)
OBJECT_STORE_MIB = int(os.environ.get("SSLPIPE_BENCH_OBJECT_STORE_MIB", "160"))


def _init_ray() -> None:
    import ray

    # our own local Ray (address="local"), never a cluster someone else started on this machine;
    # 2 physical cores: a few more logical CPUs so read and decode tasks overlap with the driver
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR",
             object_store_memory=OBJECT_STORE_MIB * 1024**2)
    ray.data.DataContext.get_current().enable_progress_bars = False


def measure_stream(paths: list[str], n: int) -> dict:
    """Drain ``read_decoded`` over the first ``n`` images; images/s and peak tree RSS."""
    _init_ray()
    from pipelines.readers import read_decoded

    shards = paths[: -(-n // SHARD_SIZE)]
    seen = 0
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        for batch in read_decoded(shards, 32, 3).iter_batches(batch_size=1024, batch_format="numpy"):
            seen += len(batch["key"])
        seconds = time.perf_counter() - t0
    return {"n": seen, "seconds": round(seconds, 2), "images_per_s": round(seen / seconds, 1),
            "peak_rss_mib": round(rss.peak / 2**20, 1)}


class _ShardImages(torch.utils.data.IterableDataset):
    """torch IterableDataset over tar shards for the DataLoader baseline: workers split the shards."""

    def __init__(self, paths: list[str], transform) -> None:
        super().__init__()
        self.paths, self.transform = paths, transform

    def __iter__(self):
        from PIL import Image

        from curation.shards import iter_tar_samples

        info = torch.utils.data.get_worker_info()
        mine = self.paths if info is None else self.paths[info.id :: info.num_workers]
        for path in mine:
            with open(path, "rb") as f:
                for row in iter_tar_samples(f, path):
                    if row["image"] is None:
                        continue
                    image = Image.open(io.BytesIO(row["image"])).convert("RGB")
                    yield self.transform(image), self.transform(image)


def measure_views(paths: list[str], n: int, batch_size: int) -> dict:
    """Decode + two views at 32 px: our Ray Data + batched path vs a 2-worker DataLoader, same run."""
    from ssl_models.augment import ViewRecipe, augment_batch, torchvision_recipe

    shards = paths[: -(-n // SHARD_SIZE)]
    recipe = ViewRecipe(size=32, mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.243, 0.261))

    # baseline first, before Ray starts its processes
    loader = torch.utils.data.DataLoader(_ShardImages(shards, torchvision_recipe(recipe)), batch_size=batch_size,
                                         num_workers=2)
    # steady state for both: the clock starts at the first batch (worker / pipeline start-up excluded),
    # the rate counts the images after it
    seen, t0 = 0, None
    for v1, _v2 in loader:  # both views are made; the count needs one
        if t0 is None:
            t0 = time.perf_counter()
            continue
        seen += len(v1)
    dl_seconds = time.perf_counter() - t0
    dl_rate = seen / dl_seconds

    _init_ray()
    from pipelines.readers import read_decoded

    gen = torch.Generator().manual_seed(0)
    ours, t0 = 0, None
    for batch in read_decoded(shards, 32, 3).iter_batches(batch_size=batch_size, batch_format="numpy"):
        images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2)
        v1, _v2 = augment_batch(images, recipe, gen), augment_batch(images, recipe, gen)  # two views, as the loader makes
        if t0 is None:
            t0 = time.perf_counter()
            continue
        ours += len(v1)
    ours_seconds = time.perf_counter() - t0
    ours_rate = ours / ours_seconds
    return {"n": ours, "dataloader_images_per_s": round(dl_rate, 1), "ours_images_per_s": round(ours_rate, 1),
            "ratio": round(ours_rate / dl_rate, 2), "dataloader_seconds": round(dl_seconds, 2),
            "ours_seconds": round(ours_seconds, 2), "torch_threads": torch.get_num_threads()}


def _child(args: argparse.Namespace) -> None:
    paths = json.loads(Path(args.paths_file).read_text())
    result = measure_stream(paths, args.n) if args.child == "stream" else measure_views(paths, args.n, args.batch_size)
    print("RESULT " + json.dumps(result), flush=True)


def _run_child(kind: str, paths_file: Path, n: int, batch_size: int) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--paths-file", str(paths_file), "--n", str(n),
           "--batch-size", str(batch_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{kind} n={n} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="N for the streaming-memory runs")
    parser.add_argument("--views-n", type=int, default=30000, help="images for the view-throughput comparison")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-views", action="store_true", help="only the streaming-memory runs")
    parser.add_argument("--quick", action="store_true", help="small N (2k, 5k; views on 2k): a smoke run")
    parser.add_argument("--workdir", help="where to keep generated shards (default: a temp dir, removed after)")
    parser.add_argument("--child", choices=("stream", "views"), help=argparse.SUPPRESS)
    parser.add_argument("--paths-file", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    cifar = os.environ.get("SSLPIPE_CIFAR10")
    if not cifar or not Path(cifar).is_dir():
        raise SystemExit("set SSLPIPE_CIFAR10 to the CIFAR-10 image folder (train|test/<class>/NNNN.jpg)")
    sizes = [2000, 5000] if args.quick else [int(s) for s in args.sizes.split(",")]
    views_n = 2000 if args.quick else args.views_n
    tmp = tempfile.TemporaryDirectory(prefix="sslpipe-bench-") if not args.workdir else None
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        paths = make_shards(Path(cifar), work / "shards", max(sizes + [views_n]))
        paths_file = work / "paths.json"
        paths_file.write_text(json.dumps(paths))
        gen_seconds = time.perf_counter() - t0
        stream = [_run_child("stream", paths_file, n, args.batch_size) for n in sizes]
        views = None if args.no_views else _run_child("views", paths_file, views_n, args.batch_size)
    finally:
        if tmp is not None:
            tmp.cleanup()
    first, last = stream[0], stream[-1]
    result = {
        "cpus": os.cpu_count(),
        "shard_generation_seconds": round(gen_seconds, 1),
        "stream": stream,
        "rss_ratio_largest_vs_smallest": round(last["peak_rss_mib"] / first["peak_rss_mib"], 3),
        "rss_bound_ok": last["peak_rss_mib"] <= 1.2 * first["peak_rss_mib"],
        "object_store_mib": OBJECT_STORE_MIB,
        "views": views,
        "views_goal_3x_met": views["ratio"] >= 3.0 if views else None,
    }
    print(json.dumps(result, indent=2))
    print()
    print(f"{'N':>9} {'images/s':>10} {'peak RSS MiB':>13} {'seconds':>8}")
    for row in stream:
        print(f"{row['n']:>9} {row['images_per_s']:>10} {row['peak_rss_mib']:>13} {row['seconds']:>8}")
    print(f"peak RSS ratio N={last['n']} vs N={first['n']}: {result['rss_ratio_largest_vs_smallest']} (bound 1.2)")
    if views is None:
        return
    print(f"decode + 2 views @32px on {views['n']} images: ours {views['ours_images_per_s']} img/s, "
          f"DataLoader(2 workers, torchvision per sample) {views['dataloader_images_per_s']} img/s, "
          f"ratio {views['ratio']}x (goal 3x)")


if __name__ == "__main__":
    main()
