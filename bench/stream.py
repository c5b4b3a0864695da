"""Streaming feed benchmark (issue #27): memory and start-up against pool size, stream vs in-memory speed,
and the 224 px feed against a DataLoader, Ray Data's own image reader, and decode + crop alone.

Every measurement runs in a fresh subprocess (its own Ray), so memory and start-up are per measurement,
and all of them run in one invocation, so the ratios are taken side by side on the same machine state.

1. ``memory`` (32 px CIFAR-10 JPEGs in 1,000-image tar shards, repeated with new keys up to the largest
   N): ``train.max_steps`` optimizer steps (50) of streaming training (``data.cache=stream``, 2 DDP
   workers) at each N; peak PSS of the whole process tree (driver, raylet, Train workers, Ray Data
   workers; sampled every 0.2 s, shared pages counted once) and the time from the train function's
   start to its first optimizer step. Goals: peak(1 M) <= 1.2 x peak(10 k); first step(1 M) <= 1.5 x
   first step(10 k).
2. ``speed``: the same model and pool (``--speed-n`` images) trained two epochs in memory mode and two
   in stream mode; the second epoch's images/s of each (the first holds the stream's start-up).
   Goal: stream >= 0.9 x memory.
3. ``feed224``: decode + RandomResizedCrop + flip + two coloured views (SimCLR's ImageNet recipe,
   224 px) up to the training step's input, images/s in steady state (each clock starts at the first
   batch), on photos the bench makes: CIFAR-10 JPEGs upscaled to random widths and heights in
   160..500 px. Ours (``StreamFeed`` + ``colour_views``) against (a) a torch DataLoader with 2 workers
   running ``torchvision.transforms.v2`` per image on the same JPEGs, (b) Ray Data ``read_images`` + a
   per-row ``map`` with the same v2 recipe, and (c) decode + crop alone (our per-sample decode with a
   reduced JPEG draft and two crops, no Ray, no colour) in one process per core. Goals: ours >= 1.5 x
   (a) and >= 0.8 x (c).
4. ``--gpu`` (only where a CUDA GPU is present): steps/s of 224 px streaming training on the GPU
   (``train.use_gpu=true``) as a fraction of the same model's steps/s on synthetic crops already on the
   GPU. Goal >= 0.9.

Prints one JSON object, then a table. Full size (a quiet machine, ~1 GB of shards for 1 M):

    nice -n 10 python bench/stream.py --sizes 10000,100000,1000000 --speed-n 10000 --feed-n 4000
    python bench/stream.py --gpu --feed-n 4000          # on a GPU host
    python bench/stream.py --quick                      # smoke size: minutes
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ingest import PeakRSS, make_shards  # noqa: E402  (bench/ is on sys.path: the script's folder)

SHARD_SIZE = 1000  # bench/ingest.py's make_shards writes shards of this many images
PHOTO_SHARD = 256
OBJECT_STORE_MIB = int(os.environ.get("SSLPIPE_BENCH_OBJECT_STORE_MIB", "300"))


def _init_ray(num_cpus: int | None = None) -> None:
    import ray

    # our own local Ray, never a cluster someone else started on this machine
    ray.init(address="local", num_cpus=num_cpus or 2 * (os.cpu_count() or 1), include_dashboard=False,
             logging_level="ERROR", object_store_memory=OBJECT_STORE_MIB * 2**20)
    ray.data.DataContext.get_current().enable_progress_bars = False


def _pool(paths: list[str], n: int):
    from pipelines.feed import ShardPool

    shards = paths[: -(-n // SHARD_SIZE)]
    counts = [SHARD_SIZE] * len(shards)
    counts[-1] = n - SHARD_SIZE * (len(shards) - 1)
    return ShardPool(tuple(shards), tuple(counts))


def _config(run_dir: Path, model: str, overrides: list[str]):
    """A fresh run directory each time: pretrain() resumes from a checkpoint it finds there."""
    import shutil

    from pipelines.config import load_config

    shutil.rmtree(run_dir, ignore_errors=True)

    width = ["backbone.width=16"] if model == "convnet_small" else []
    return load_config(None, [
        f"run_dir={run_dir}", f"backbone.name={model}", *width, "backbone.cifar_stem=true", "data.image_size=32",
        "data.channels=3", "method.name=simclr", "method.proj_hidden_dim=512", "method.proj_dim=128",
        "train.batch_size=256", "train.num_workers=2", "train.cpus_per_worker=1.0", "train.warmup_epochs=0",
        "train.knn_monitor_every=0", "train.progress_every_s=0", "augment.crop_scale_min=0.08",
        "augment.flip_prob=0.5", "augment.grayscale_prob=0.2", *overrides])


def measure_memory(paths: list[str], n: int, steps: int, model: str, workdir: Path) -> dict:
    """Peak PSS and time to the first step of ``steps`` streaming optimizer steps over ``n`` images."""
    _init_ray()
    from pipelines.pretrain import pretrain

    cfg = _config(workdir / f"mem_{n}", model, ["data.cache=stream", f"train.max_steps={steps}"])
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        history = pretrain(cfg, _pool(paths, n), workdir / f"mem_{n}").history
        seconds = time.perf_counter() - t0
    return {"n": n, "steps": history[-1]["step"], "peak_pss_mib": round(rss.peak / 2**20, 1),
            "first_step_seconds": round(history[0]["first_step_seconds"], 2), "seconds": round(seconds, 1)}


def measure_speed(paths: list[str], n: int, mode: str, model: str, workdir: Path) -> dict:
    """Two epochs in ``mode``; the second epoch's images/s (the first holds the stream's start-up)."""
    _init_ray()
    from pipelines.pretrain import pretrain

    cfg = _config(workdir / f"speed_{mode}", model, [f"data.cache={mode}", "train.epochs=2"])
    history = pretrain(cfg, _pool(paths, n), workdir / f"speed_{mode}").history
    return {"mode": mode, "n": n, "images_per_s": round(history[-1]["images_per_s"], 1),
            "first_epoch_images_per_s": round(history[0]["images_per_s"], 1)}


# --------------------------------------------------------------------------- 224 px photos


def make_photos(cifar: Path | None, out: Path, n: int, seed: int = 0) -> tuple[Path, list[str]]:
    """``n`` JPEG photos: CIFAR-10 train images upscaled to random width and height in 160..500 px, as a
    folder (for the DataLoader and ``read_images``) and as tar shards of the same bytes (for ours)."""
    from PIL import Image

    from curation.shards import Sample, write_shard

    folder, shard_dir = out / "photos", out / "photo_shards"
    shards = [shard_dir / f"shard-{i:06d}.tar" for i in range(-(-n // PHOTO_SHARD))]
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == n and all(s.exists() for s in shards):
        return folder, [str(s) for s in shards]
    folder.mkdir(parents=True, exist_ok=True)
    shard_dir.mkdir(parents=True, exist_ok=True)
    files = sorted((cifar / "train").glob("*/*.jpg")) if cifar is not None else []
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        if files:
            src = Image.open(files[i % len(files)]).convert("RGB")
        else:  # no CIFAR-10 here (a GPU host): smooth random colour fields, as costly to decode
            src = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((32, 32), Image.BICUBIC)
        w, h = (int(v) for v in rng.integers(160, 501, 2))
        buf = io.BytesIO()
        src.resize((w, h), Image.BICUBIC).save(buf, format="JPEG", quality=90)
        (folder / f"{i:06d}.jpg").write_bytes(buf.getvalue())
        samples.append(Sample(f"{i:06d}", buf.getvalue(), "jpg", -1))
    for k, path in enumerate(shards):
        write_shard(samples[k * PHOTO_SHARD : (k + 1) * PHOTO_SHARD], path)
    return folder, [str(s) for s in shards]


def colour_stage_rates(batch: int, seconds: float = 20.0) -> dict:
    """Images/s (two views each) of the worker's colour stage alone at 224 px, in this process, at 1 and 2
    torch threads: where the 224 px feed's time goes once crops exist."""
    import torch

    from ssl_models.augment import colour_views

    recipe, gen = imagenet_recipe(), torch.Generator().manual_seed(0)
    crops = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8, generator=gen)
    colour_views(crops, recipe, gen)  # warm-up
    rates = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        t0, views = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            colour_views(crops, recipe, gen)
            views += batch
        rates[f"threads_{threads}_images_per_s"] = round(views / 2 / (time.perf_counter() - t0), 1)
    return rates


def imagenet_recipe():
    from ssl_models.augment import ViewRecipe

    # SimCLR's ImageNet recipe: crop (0.08, 1), flip, jitter s=1 with p=0.8, grayscale 0.2, blur 0.5
    return ViewRecipe(size=224, crop_scale=(0.08, 1.0), flip_prob=0.5, jitter_prob=0.8, jitter_strength=1.0,
                      grayscale_prob=0.2, blur_prob=0.5, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _steady(batches, sizes) -> dict:
    """images/s from the first batch on (start-up excluded), and the start-up itself."""
    t_start, t_first, seen = time.perf_counter(), None, 0
    for batch in batches:
        if t_first is None:
            t_first = time.perf_counter()
            continue
        seen += sizes(batch)
    seconds = time.perf_counter() - t_first
    return {"images_per_s": round(seen / seconds, 1), "images": seen, "seconds": round(seconds, 2),
            "first_batch_seconds": round(t_first - t_start, 2)}


def feed_ours(shards: list[str], batch: int) -> dict:
    import torch

    _init_ray(num_cpus=os.cpu_count())
    from pipelines.feed import ShardPool, StreamFeed
    from ssl_models.augment import colour_views

    pool = ShardPool.count(shards)
    recipe = imagenet_recipe()
    feed = StreamFeed(pool, recipe, channels=3, num_views=2, local_batch=batch, window_batches=2, seed=0, rank=0,
                      world=1, max_pixels=50_000_000)
    gen = torch.Generator().manual_seed(0)

    def run():
        for b in feed.epoch_batches(0, pool.total // batch):
            yield [colour_views(b.crops[v], recipe, gen) for v in range(2)]

    return _steady(run(), lambda views: len(views[0]))


class _Photos:
    """Map-style dataset for the DataLoader baseline: a JPEG file -> two v2 views."""

    def __init__(self, files: list[Path], transform) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        image = Image.open(self.files[i]).convert("RGB")
        return self.transform(image), self.transform(image)


def feed_dataloader(folder: Path, batch: int) -> dict:
    import torch

    from ssl_models.augment import torchvision_recipe

    files = sorted(folder.glob("*.jpg"))
    loader = torch.utils.data.DataLoader(_Photos(files, torchvision_recipe(imagenet_recipe())), batch_size=batch,
                                         num_workers=2, shuffle=True)
    return _steady(loader, lambda views: len(views[0]))


def feed_ray_read_images(folder: Path, batch: int) -> dict:
    import torch

    _init_ray(num_cpus=os.cpu_count())
    import ray

    from ssl_models.augment import torchvision_recipe

    transform = torchvision_recipe(imagenet_recipe())

    def two_views(row: dict) -> dict:
        image = torch.from_numpy(np.ascontiguousarray(row["image"])).permute(2, 0, 1)
        return {"v1": transform(image).numpy(), "v2": transform(image).numpy()}

    ds = ray.data.read_images(str(folder), mode="RGB").map(two_views)
    return _steady(ds.iter_torch_batches(batch_size=batch), lambda b: len(b["v1"]))


def _decode_and_crop(path: str) -> int:
    import torch

    from pipelines.feed import chunk_crop_params, render_crops

    data = Path(path).read_bytes()
    from curation.decode import open_image

    w, h = open_image(data).size
    params = chunk_crop_params(imagenet_recipe(), 2, torch.tensor([w / h]), 0, 0, hash(path) & 0xFFFF, 0)
    render_crops(data, params, 0, 224, 3, 50_000_000)
    return 1


def feed_decode_crop_limit(folder: Path) -> dict:
    """Decode + two crops alone, one process per core: what the per-sample work costs without Ray or colour."""
    import multiprocessing as mp

    files = [str(f) for f in sorted(folder.glob("*.jpg"))]
    with mp.get_context("spawn").Pool(os.cpu_count()) as pool:
        pool.map(_decode_and_crop, files[: 2 * (os.cpu_count() or 1)])  # workers started and warm
        t0 = time.perf_counter()
        done = sum(pool.imap_unordered(_decode_and_crop, files, chunksize=16))
        seconds = time.perf_counter() - t0
    return {"images_per_s": round(done / seconds, 1), "images": done, "seconds": round(seconds, 2)}


def measure_gpu(shards: list[str], workdir: Path, steps: int, model: str) -> dict:
    """224 px streaming training on the GPU vs the same model on synthetic crops already on the GPU."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA GPU")
    _init_ray()
    from pipelines.config import load_config
    from pipelines.feed import ShardPool
    from pipelines.models import build_method_from_config
    from pipelines.pretrain import _build_optimizer, pretrain
    from ssl_models.augment import colour_views

    import shutil

    shutil.rmtree(workdir / "gpu", ignore_errors=True)  # a fresh run: pretrain() resumes from what it finds
    overrides = [f"run_dir={workdir / 'gpu'}", f"backbone.name={model}", "backbone.cifar_stem=false",
                 "data.image_size=224", "data.channels=3", "method.name=simclr", "train.batch_size=128",
                 "train.num_workers=1", "train.cpus_per_worker=1", "train.use_gpu=true", "train.precision=bf16",
                 "train.knn_monitor_every=0", "train.progress_every_s=0", "train.warmup_epochs=0",
                 "augment.crop_scale_min=0.08", "augment.flip_prob=0.5", "augment.grayscale_prob=0.2",
                 "augment.blur_prob=0.5", "augment.jitter_strength=1.0", "data.cache=stream", "train.epochs=2"]
    cfg = load_config(None, overrides)
    pool = ShardPool.count(shards)
    history = pretrain(cfg, pool, workdir / "gpu").history
    stream_steps_per_s = history[-1]["images_per_s"] / cfg.train.batch_size

    device = torch.device("cuda")
    method = build_method_from_config(cfg).to(device, memory_format=torch.channels_last)
    opt = _build_optimizer(method, cfg.train)
    from pipelines.models import view_recipe

    recipe = view_recipe(cfg)
    crops = torch.randint(0, 256, (2, cfg.train.batch_size, 3, 224, 224), dtype=torch.uint8, device=device)
    gen = torch.Generator().manual_seed(0)
    for k in range(steps + 5):
        if k == 5:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        views = [colour_views(crops[v], recipe, gen).contiguous(memory_format=torch.channels_last) for v in range(2)]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = method(views)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    synthetic_steps_per_s = steps / (time.perf_counter() - t0)
    return {"model": model, "stream_steps_per_s": round(stream_steps_per_s, 2),
            "synthetic_steps_per_s": round(synthetic_steps_per_s, 2),
            "fraction": round(stream_steps_per_s / synthetic_steps_per_s, 3), "images": pool.total}


# --------------------------------------------------------------------------- driver


def _child(args: argparse.Namespace) -> None:
    spec = json.loads(Path(args.spec).read_text())
    work = Path(spec["workdir"])
    kind = args.child
    if kind == "memory":
        out = measure_memory(spec["paths"], spec["n"], spec["steps"], spec["model"], work)
    elif kind == "speed":
        out = measure_speed(spec["paths"], spec["n"], spec["mode"], spec["model"], work)
    elif kind == "ours":
        out = feed_ours(spec["shards"], spec["batch"])
    elif kind == "dataloader":
        out = feed_dataloader(Path(spec["folder"]), spec["batch"])
    elif kind == "read_images":
        out = feed_ray_read_images(Path(spec["folder"]), spec["batch"])
    elif kind == "limit":
        out = feed_decode_crop_limit(Path(spec["folder"]))
    elif kind == "gpu":
        out = measure_gpu(spec["shards"], work, spec["steps"], spec["gpu_model"])
    else:
        raise SystemExit(f"unknown child {kind}")
    print("RESULT " + json.dumps(out), flush=True)


REUSE = False  # --reuse: take a part's result from an earlier run in the same --workdir


def _run_child(kind: str, spec: dict, work: Path) -> dict:
    """One measurement in a fresh process; its result is also kept in the workdir (``--reuse``)."""
    tag = f"{kind}_{spec.get('mode', '')}{spec.get('n', '')}"
    done = work / f"result_{tag}.json"
    if REUSE and done.exists():
        return json.loads(done.read_text())
    path = work / f"spec_{tag}.json"
    path.write_text(json.dumps(spec))
    for attempt in (1, 2, 3):  # a local Ray that fails to start on a loaded machine gets two more tries
        proc = subprocess.run([sys.executable, __file__, "--child", kind, "--spec", str(path)], capture_output=True,
                              text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "RAY_TRAIN_V2_ENABLED": "1"})
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode == 0 and lines:
            result = json.loads(lines[-1][len("RESULT "):])
            done.write_text(json.dumps(result))
            return result
        if attempt == 3 or "timed out during startup" not in proc.stderr:
            raise SystemExit(f"{kind} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    raise AssertionError("unreachable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="pool sizes for the memory runs")
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps per memory run")
    parser.add_argument("--speed-n", type=int, default=10000, help="images for the stream vs memory speed run")
    parser.add_argument("--feed-n", type=int, default=4000, help="224 px photos for the feed comparison")
    parser.add_argument("--model", default="resnet18", help="backbone of the 32 px runs (CIFAR stem)")
    parser.add_argument("--batch", type=int, default=64, help="batch of the 224 px feed comparison")
    parser.add_argument("--gpu", action="store_true", help="only the GPU measurement (needs CUDA)")
    parser.add_argument("--gpu-model", default="resnet50")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: memory,speed,feed224")
    parser.add_argument("--quick", action="store_true", help="smoke size: 2k/6k pools, 10 steps, small model")
    parser.add_argument("--colour-only", action="store_true",
                        help="only the 224 px colour stage (colour_views on uint8 crops, batch 64) at 1 and 2 threads")
    parser.add_argument("--workdir", help="keep generated shards and photos here (default: a temp dir)")
    parser.add_argument("--reuse", action="store_true", help="reuse parts already measured in --workdir")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.colour_only:  # synthetic crops: no CIFAR-10 needed
        print(json.dumps(colour_stage_rates(args.batch)))
        return
    if args.child:
        _child(args)
        return
    cifar = os.environ.get("SSLPIPE_CIFAR10")
    if (not cifar or not Path(cifar).is_dir()) and not args.gpu:
        raise SystemExit("set SSLPIPE_CIFAR10 to the CIFAR-10 image folder (train|test/<class>/NNNN.jpg)")
    global REUSE
    REUSE = args.reuse
    if args.quick:
        args.sizes, args.steps, args.speed_n, args.feed_n, args.model = "2000,6000", 10, 2048, 384, "convnet_small"
    sizes = [int(s) for s in args.sizes.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    tmp = tempfile.TemporaryDirectory(prefix="sslpipe-stream-") if not args.workdir else None
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"cpus": os.cpu_count(), "object_store_mib": OBJECT_STORE_MIB, "model": args.model}
    try:
        if args.gpu:
            _, shards = make_photos(Path(cifar) if cifar and Path(cifar).is_dir() else None, work, args.feed_n)
            result["gpu"] = _run_child("gpu", {"shards": shards, "workdir": str(work), "steps": 30,
                                               "gpu_model": args.gpu_model}, work)
            print(json.dumps(result, indent=2))
            return
        paths = make_shards(Path(cifar), work / "shards", max(sizes + [args.speed_n])) if not {"memory", "speed"} <= skip else []
        base = {"paths": paths, "workdir": str(work), "model": args.model}
        if "memory" not in skip:
            mem = [_run_child("memory", {**base, "n": n, "steps": args.steps}, work) for n in sizes]
            first, last = mem[0], mem[-1]
            result["memory"] = {
                "runs": mem,
                "peak_ratio_largest_vs_smallest": round(last["peak_pss_mib"] / first["peak_pss_mib"], 3),
                "first_step_ratio_largest_vs_smallest": round(last["first_step_seconds"] / first["first_step_seconds"], 3),
            }
            result["memory"]["peak_goal_met"] = result["memory"]["peak_ratio_largest_vs_smallest"] <= 1.2
            result["memory"]["first_step_goal_met"] = result["memory"]["first_step_ratio_largest_vs_smallest"] <= 1.5
        if "speed" not in skip:
            runs = {m: _run_child("speed", {**base, "n": args.speed_n, "mode": m}, work) for m in ("memory", "stream")}
            ratio = runs["stream"]["images_per_s"] / runs["memory"]["images_per_s"]
            result["speed"] = {**runs, "stream_vs_memory": round(ratio, 3), "goal_met": ratio >= 0.9}
        if "feed224" not in skip:
            folder, shards = make_photos(Path(cifar), work, args.feed_n)
            spec = {"shards": shards, "folder": str(folder), "batch": args.batch, "workdir": str(work)}
            feed = {k: _run_child(k, spec, work) for k in ("limit", "ours", "dataloader", "read_images")}
            ours = feed["ours"]["images_per_s"]
            feed["ours_vs_dataloader"] = round(ours / feed["dataloader"]["images_per_s"], 3)
            feed["ours_vs_read_images"] = round(ours / feed["read_images"]["images_per_s"], 3)
            feed["ours_vs_decode_crop_limit"] = round(ours / feed["limit"]["images_per_s"], 3)
            feed["goals_met"] = {"1.5x_dataloader": feed["ours_vs_dataloader"] >= 1.5,
                                 "0.8x_limit": feed["ours_vs_decode_crop_limit"] >= 0.8}
            result["feed224"] = feed
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(json.dumps(result, indent=2))
    print()
    if "memory" in result:
        print(f"{'N':>9} {'steps':>6} {'peak PSS MiB':>13} {'first step s':>13} {'seconds':>8}")
        for r in result["memory"]["runs"]:
            print(f"{r['n']:>9} {r['steps']:>6} {r['peak_pss_mib']:>13} {r['first_step_seconds']:>13} {r['seconds']:>8}")
        m = result["memory"]
        print(f"peak PSS ratio {m['peak_ratio_largest_vs_smallest']} (goal <= 1.2), first-step ratio "
              f"{m['first_step_ratio_largest_vs_smallest']} (goal <= 1.5)")
    if "speed" in result:
        s = result["speed"]
        print(f"32 px, {args.model}, epoch 2: memory {s['memory']['images_per_s']} img/s, stream "
              f"{s['stream']['images_per_s']} img/s, ratio {s['stream_vs_memory']} (goal >= 0.9)")
    if "feed224" in result:
        f = result["feed224"]
        print(f"{'224 px feed, 2 views':<44} {'images/s':>9} {'first batch s':>14}")
        for name, label in (("ours", "ours (Ray Data crops + batched colour)"), ("dataloader", "(a) DataLoader, 2 workers, v2"),
                            ("read_images", "(b) Ray Data read_images + map"), ("limit", "(c) decode + crop alone")):
            print(f"{label:<44} {f[name]['images_per_s']:>9} {f[name].get('first_batch_seconds', '-'):>14}")
        print(f"ours / (a) {f['ours_vs_dataloader']} (goal >= 1.5), ours / (c) {f['ours_vs_decode_crop_limit']} "
              f"(goal >= 0.8), ours / (b) {f['ours_vs_read_images']}")


if __name__ == "__main__":
    main()
