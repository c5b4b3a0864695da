"""Ray Train overhead: images/s of our Ray Train loop vs a plain single-process torch loop.

Same model, batch, augmentation and in-memory data, side by side in one run (machines are
noisy, so only the ratio means much). Also 1 -> 2 workers. Prints JSON, then a table.

    python bench/train_overhead.py [--images 2048] [--epochs 3] [--batch 256]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.config import load_config  # noqa: E402
from pipelines.models import build_method_from_config, view_recipe  # noqa: E402
from pipelines.sources import load_mnist_digits  # noqa: E402
from ssl_models.augment import augment_batch  # noqa: E402


def plain_loop(cfg, images: torch.Tensor, epochs: int, threads: int) -> float:
    """The baseline: the same step, no Ray. Returns steady-state images/s (first epoch excluded)."""
    torch.set_num_threads(threads)
    method = build_method_from_config(cfg)
    opt = torch.optim.AdamW(method.parameters(), lr=cfg.train.lr)
    recipe = view_recipe(cfg)
    gen = torch.Generator().manual_seed(0)
    bs = cfg.train.batch_size
    rates = []
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        t0 = time.time()
        steps = len(images) // bs
        for i in range(steps):
            batch = images[order[i * bs : (i + 1) * bs]]
            views = [augment_batch(batch, recipe, gen) for _ in range(2)]
            loss, _ = method(views)
            opt.zero_grad()
            loss.backward()
            opt.step()
        rates.append(steps * bs / (time.time() - t0))
    return float(np.mean(rates[1:] if len(rates) > 1 else rates))


def ray_loop(cfg, rows: list[dict], workers: int, cpus: float, threads: int) -> float:
    import ray

    from pipelines.pretrain import pretrain

    with tempfile.TemporaryDirectory() as tmp:
        c = load_config(None, [f"run_dir={tmp}", f"train.num_workers={workers}", f"train.cpus_per_worker={cpus}",
                               f"train.threads_per_worker={threads}", *BASE, f"train.epochs={cfg.train.epochs}",
                               f"train.batch_size={cfg.train.batch_size}"])
        result = pretrain(c, ray.data.from_items(rows), tmp)
    rates = [h["images_per_s"] for h in result.history]
    return float(np.mean(rates[1:] if len(rates) > 1 else rates))


BASE = ["train.warmup_epochs=0", "train.knn_monitor_every=0", "train.checkpoint_every_epochs=1000"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()

    import ray

    cores = os.cpu_count() or 2
    ray.init(num_cpus=2 * cores, include_dashboard=True, dashboard_host="127.0.0.1", logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    x, y = load_mnist_digits()
    x, y = x[: args.images], y[: args.images]
    rows = [{"image": x[i][:, :, None], "label": int(y[i])} for i in range(len(x))]
    cfg = load_config(None, [f"train.epochs={args.epochs}", f"train.batch_size={args.batch}", *BASE])
    images = torch.from_numpy(x[:, None])

    results = {
        "plain_torch_1proc": plain_loop(cfg, images, args.epochs, threads=cores),
        "ray_train_1_worker": ray_loop(cfg, rows, workers=1, cpus=cores, threads=cores),
        "ray_train_2_workers": ray_loop(cfg, rows, workers=2, cpus=cores / 2, threads=max(1, cores // 2)),
    }
    base = results["plain_torch_1proc"]
    report = {
        "model": "convnet_small + SimCLR head (demo config)",
        "images": args.images, "batch": args.batch, "epochs": args.epochs, "cores": cores,
        "images_per_s": {k: round(v, 1) for k, v in results.items()},
        "ratio_vs_plain": {k: round(v / base, 3) for k, v in results.items()},
        "goal": "ray_train_1_worker / plain >= 0.95",
    }
    print(json.dumps(report, indent=2))
    print(f"\n{'loop':<24}{'images/s':>12}{'x plain':>10}")
    for k, v in results.items():
        print(f"{k:<24}{v:>12.1f}{v / base:>10.3f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
