"""Dynamic pruning vs full pool, random subset and static curation, at equal optimizer steps.

Pool: CIFAR-10 train (``SSLPIPE_CIFAR10``) made redundant and long-tailed: class sizes fall
exponentially (``--imbalance`` : 1), plus planted exact and near duplicates. Every strategy
trains the same model for the same number of optimizer steps; kNN top-1 (k=200, T=0.1) is
measured overall and on the tail classes (the smallest third) with a balanced bank from the
rest of CIFAR-10 train and queries from CIFAR-10 test. Wall time includes re-embedding.

    SSLPIPE_CIFAR10=... python bench/dynamic.py [--head 500] [--epochs 6] [--queries 1000]
Prints JSON, then a table.
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
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.planting import plant_pool  # noqa: E402
from curation.shards import write_shards  # noqa: E402
from pipelines.evaluation.knn import LIGHTLY_CIFAR10, knn_accuracy  # noqa: E402


def load_class_images(root: Path, split: str, per_class: list[int], offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    classes = sorted(os.listdir(root / split))
    xs, ys = [], []
    for c, n in enumerate(per_class):
        for f in sorted(os.listdir(root / split / classes[c]))[offset : offset + n]:
            xs.append(np.asarray(Image.open(root / split / classes[c] / f).convert("RGB")))
            ys.append(c)
    return np.stack(xs), np.array(ys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", type=int, default=500, help="images of the largest class")
    parser.add_argument("--imbalance", type=float, default=100.0)
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the full pool; sets the step budget")
    parser.add_argument("--bank", type=int, default=200, help="kNN bank images per class")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--short", type=float, default=0.6,
                        help="also run dynamic cluster-balance with this fraction of the step budget (equal-quality view)")
    args = parser.parse_args()
    root = Path(os.environ.get("SSLPIPE_CIFAR10", ""))
    if not (root / "train").is_dir():
        sys.exit("set SSLPIPE_CIFAR10 to the CIFAR-10 image folder (train|test/<class>/*.jpg)")

    import ray

    from pipelines.config import load_config
    from pipelines.curate import curate
    from pipelines.evaluate import embed
    from pipelines.pretrain import load_backbone, pretrain
    from pipelines.readers import read_decoded

    ray.init(address="local", num_cpus=2 * (os.cpu_count() or 1), include_dashboard=True, dashboard_host="127.0.0.1",
             logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    counts = [max(1, int(round(args.head * (1 / args.imbalance) ** (c / 9)))) for c in range(10)]
    x, y = load_class_images(root, "train", counts)
    samples = plant_pool(x, y, exact_duplicates=len(x) // 5, near_duplicates=len(x) // 5, blank=0, noise=0, corrupt=0)
    bank_x, bank_y = load_class_images(root, "train", [args.bank] * 10, offset=args.head)
    test_x, test_y = load_class_images(root, "test", [args.queries // 10] * 10)
    tail = set(np.argsort(counts)[:3].tolist())

    base = ["data.image_size=32", "data.channels=3", "backbone.name=convnet_small", "backbone.width=32",
            "method.temperature=0.2", "method.proj_hidden_dim=256", "method.proj_dim=64",  # the demo's SimCLR head
            "augment.flip_prob=0.5", "augment.grayscale_prob=0.2", "augment.crop_scale_min=0.2",
            "train.num_workers=1", "train.cpus_per_worker=2", "train.batch_size=128", "train.knn_monitor_every=0",
            "train.warmup_epochs=1", "train.checkpoint_every_epochs=1000"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        pool_paths = [str(p) for p in write_shards(samples, Path(tmp) / "pool", 1000)]
        static = curate(pool_paths, Path(tmp) / "static", load_config(None, [
            "curate.embedder=random_convnet", f"curate.balance_fraction={args.keep}", "curate.near_dedup_max_hamming=6",
        ]).curate)
        full_ds = read_decoded(pool_paths, 32, 3).select_columns(["image", "label"]).materialize()
        n_full = full_ds.count()
        random_ds = full_ds.random_sample(args.keep, seed=0).materialize()
        static_ds = read_decoded(static.shard_paths, 32, 3).select_columns(["image", "label"]).materialize()
        plans = {
            "full_pool": (full_ds, []),
            "random_subset": (random_ds, []),
            "static_curation": (static_ds, []),
            "dynamic_cluster_balance": (full_ds, ["dynamic.policy=cluster_balance", "dynamic.warmup_epochs=1",
                                                  "dynamic.every_epochs=2", f"dynamic.keep_fraction={args.keep}"]),
            "dynamic_loss_based": (full_ds, ["dynamic.policy=loss_based", "dynamic.warmup_epochs=1",
                                             "dynamic.every_epochs=2", f"dynamic.keep_fraction={args.keep}"]),
        }
        if args.short:
            # at equal steps pruning cannot save time (every step costs the same); the question a user asks
            # is whether fewer steps on a balanced subset reach the full pool's quality
            plans[f"dynamic_cluster_balance_{args.short:g}x_steps"] = plans["dynamic_cluster_balance"]
        steps_budget = args.epochs * (n_full // 128)
        for name, (ds, extra) in plans.items():
            n = ds.count()
            budget = steps_budget * (args.short if name.endswith("x_steps") else 1.0)
            epochs = max(1, int(round(budget / max(1, n // 128))))  # equal optimizer steps (pretrain counts steps on
            # the full pool, so a pruned run takes more, shorter epochs to the same step count)
            run = Path(tmp) / name
            cfg = load_config(None, [f"run_dir={run}", f"train.epochs={epochs}", *base, *extra])
            t0 = time.time()
            res = pretrain(cfg, ds, run)
            wall = time.time() - t0
            backbone = load_backbone(cfg, res.checkpoint_path)
            fb, ft = embed(backbone, bank_x, cfg), embed(backbone, test_x, cfg)
            overall = knn_accuracy(fb, bank_y, ft, test_y, LIGHTLY_CIFAR10)
            mask = np.isin(test_y, list(tail))
            tail_acc = knn_accuracy(fb, bank_y, ft[mask], test_y[mask], LIGHTLY_CIFAR10)
            results[name] = {"train_images": n, "steps": res.history[-1]["step"], "knn_top1": round(overall, 4),
                             "knn_tail": round(tail_acc, 4), "wall_s": round(wall, 1)}
            print(f"[bench] {name}: {results[name]}", flush=True)
    full_wall = results["full_pool"]["wall_s"]
    for r in results.values():
        r["wall_vs_full"] = round(r["wall_s"] / full_wall, 3)
    report = {"pool": {"class_counts": counts, "planted_copies": len(samples) - len(x), "total": len(samples)},
              "protocol": LIGHTLY_CIFAR10.name, "tail_classes": sorted(tail), "results": results,
              "goal": "dynamic_cluster_balance >= full_pool on overall and tail kNN at <= 0.6x its wall time",
              "note": "rows other than *_x_steps train the same number of optimizer steps on the same batch size, so "
                      "their wall time cannot drop below the full pool's; the *_x_steps row is the equal-quality test"}
    print(json.dumps(report, indent=2))
    print(f"\n{'strategy':<36}{'images':>8}{'steps':>7}{'kNN':>8}{'tail kNN':>10}{'wall s':>9}{'x full':>8}")
    for name, r in results.items():
        print(f"{name:<36}{r['train_images']:>8}{r['steps']:>7}{r['knn_top1']:>8.3f}{r['knn_tail']:>10.3f}"
              f"{r['wall_s']:>9.1f}{r['wall_vs_full']:>8.2f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
