"""Ray Train overhead: images/s of our Ray Train loop vs a plain single-process torch loop.

Same model, batch, augmentation, memory format and in-memory data, side by side in one run
(machines are noisy, so only the ratio means much). Also 1 -> 2 workers. For each Ray run it
also reports where the machine's CPU time went (``bench/cpusplit.py``): the training workers,
Ray's own processes (GCS, raylet, dashboard, Ray Train's and Ray Data's actors), the driver.
Prints JSON, then a table.

    python bench/train_overhead.py [--images 2048] [--epochs 3] [--batch 256]
    python bench/train_overhead.py --model resnet18-cifar --images 1024 --epochs 2   # issue #6's model

Both loops run under the same malloc (``--malloc``, default: what ``train.allocator=auto`` picks).
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

from pipelines.allocator import allocator_in_use, resolve_allocator, run_under  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.models import build_method_from_config, view_recipe  # noqa: E402
from pipelines.sources import load_mnist_digits  # noqa: E402
from ssl_models.augment import augment_batch  # noqa: E402

from cpusplit import CpuSplit  # noqa: E402

#: config overrides per --model: the demo's small convnet on MNIST, or issue #6's SimCLR ResNet-18 (CIFAR stem)
MODELS = {
    "convnet": ["method.temperature=0.2", "method.proj_hidden_dim=256", "method.proj_dim=64"],  # the demo's head
    "resnet18-cifar": ["backbone.name=resnet18", "backbone.cifar_stem=true", "data.image_size=32", "data.channels=3",
                       "method.name=simclr", "method.temperature=0.5", "method.proj_hidden_dim=512",
                       "method.proj_dim=128", "train.optimizer=sgd", "train.lr=0.12", "augment.blur_prob=0.0"],
}


def plain_loop(cfg, images: torch.Tensor, epochs: int, threads: int) -> float:
    """The baseline: the same step, no Ray. Returns steady-state images/s (first epoch excluded)."""
    torch.set_num_threads(threads)
    method = build_method_from_config(cfg)
    fmt = (torch.channels_last if cfg.train.channels_last and not cfg.backbone.name.startswith("vit")
           else torch.contiguous_format)  # as pipelines.pretrain does
    method = method.to(memory_format=fmt)
    opt = (torch.optim.SGD(method.parameters(), lr=cfg.train.lr, momentum=0.9) if cfg.train.optimizer == "sgd"
           else torch.optim.AdamW(method.parameters(), lr=cfg.train.lr))
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
            views = [augment_batch(batch, recipe, gen).contiguous(memory_format=fmt) for _ in range(2)]
            loss, _ = method(views)
            opt.zero_grad()
            loss.backward()
            opt.step()
        rates.append(steps * bs / (time.time() - t0))
    return float(np.mean(rates[1:] if len(rates) > 1 else rates))


def ray_loop(cfg, overrides: list[str], rows: list[dict], workers: int, cpus: float, threads: int) -> tuple[float, dict]:
    """Steady-state images/s of ``pipelines.pretrain`` (first epoch excluded) and the CPU split of the call."""
    import ray

    from pipelines.pretrain import pretrain

    with tempfile.TemporaryDirectory() as tmp:
        c = load_config(None, [f"run_dir={tmp}", f"train.num_workers={workers}", f"train.cpus_per_worker={cpus}",
                               f"train.threads_per_worker={threads}", *BASE, f"train.epochs={cfg.train.epochs}",
                               f"train.batch_size={cfg.train.batch_size}", *overrides])
        with CpuSplit() as split:
            result = pretrain(c, ray.data.from_items(rows), tmp)
    rates = [h["images_per_s"] for h in result.history]
    return float(np.mean(rates[1:] if len(rates) > 1 else rates)), split.result()


BASE = ["train.warmup_epochs=0", "train.knn_monitor_every=0", "train.checkpoint_every_epochs=1000"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--model", choices=sorted(MODELS), default="convnet",
                        help="convnet: the demo model on MNIST; resnet18-cifar: issue #6's SimCLR ResNet-18, 32x32 RGB")
    parser.add_argument("--malloc", choices=["auto", "tcmalloc", "jemalloc", "system"], default="auto",
                        help="one allocator for both sides: this process (the plain loop) re-runs itself under it "
                             "and the Ray Train workers get it as train.allocator, so only Ray's cost differs")
    args = parser.parse_args()
    allocator = resolve_allocator(args.malloc)
    run_under(allocator)

    import ray

    cores = os.cpu_count() or 2
    ray.init(num_cpus=2 * cores, include_dashboard=True, dashboard_host="127.0.0.1", logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    x, y = load_mnist_digits()
    x, y = x[: args.images], y[: args.images]
    if args.model == "resnet18-cifar":  # real digits, padded to 32x32 and repeated to 3 channels
        x = np.repeat(np.pad(x, ((0, 0), (2, 2), (2, 2)))[..., None], 3, axis=-1)
    else:
        x = x[..., None]
    rows = [{"image": x[i], "label": int(y[i])} for i in range(len(x))]
    overrides = [*MODELS[args.model], f"train.allocator={allocator.name}"]
    cfg = load_config(None, [f"train.epochs={args.epochs}", f"train.batch_size={args.batch}", *BASE, *overrides])
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    rates: dict[str, float] = {"plain_torch_1proc": plain_loop(cfg, images, args.epochs, threads=cores)}
    splits: dict[str, dict] = {}
    rates["ray_train_1_worker"], splits["ray_train_1_worker"] = ray_loop(
        cfg, overrides, rows, workers=1, cpus=cores, threads=cores)
    rates["ray_train_2_workers"], splits["ray_train_2_workers"] = ray_loop(
        cfg, overrides, rows, workers=2, cpus=cores / 2, threads=max(1, cores // 2))
    base = rates["plain_torch_1proc"]
    report = {
        "model": args.model, "images": args.images, "batch": args.batch, "epochs": args.epochs, "cores": cores,
        "images_per_s": {k: round(v, 1) for k, v in rates.items()},
        "ratio_vs_plain": {k: round(v / base, 3) for k, v in rates.items()},
        "cpu_split_of_ray_runs": splits, "malloc": allocator_in_use(),
        "goal": "ray_train_1_worker / plain >= 0.95",
    }
    print(json.dumps(report, indent=2))
    print(f"\n{'loop':<24}{'images/s':>10}{'x plain':>9}{'train CPU':>11}{'Ray CPU':>9}{'driver':>8}")
    for k, v in rates.items():
        share = splits.get(k, {}).get("share_of_machine", {})
        cols = "".join(f"{share[c]:>{w}.1%}" if c in share else f"{'-':>{w}}"
                       for c, w in (("train", 11), ("ray", 9), ("driver", 8)))
        print(f"{k:<24}{v:>10.1f}{v / base:>9.3f}{cols}")
    ray.shutdown()


if __name__ == "__main__":
    main()
