"""Sweep benchmark on CIFAR-10: temperature x colour-jitter strength, ranked by online kNN, ASHA.

Needs ``SSLPIPE_CIFAR10`` pointing at the image folder (train|test/<class>/*.jpg). The base is
configs/cifar10.yaml shrunk to a CPU-sized run (a small convnet, a subset, a few epochs, in-process
trials), because the point is the sweep machinery and how kNN moves with the knobs, not the final
accuracy. Prints one JSON object, then a table.

    SSLPIPE_CIFAR10=/data/cifar10 python bench/sweep.py --limit 2000 --epochs 3
    SSLPIPE_CIFAR10=/data/cifar10 python bench/sweep.py --temperatures 0.05 0.1 0.2 0.5 --jitter 0.25 0.5 1.0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def sweep_document(args: argparse.Namespace) -> dict:
    """The sweep file, as data: what `sslpipe sweep` would read from YAML."""
    return {
        "base": "configs/cifar10.yaml",
        "overrides": {
            "run_dir": args.run_dir, "data.limit": args.limit, "backbone.name": "convnet_small",
            "backbone.width": args.width, "method.proj_hidden_dim": 128, "method.proj_dim": 64,
            "train.num_workers": 0, "train.cpus_per_worker": 1.0, "train.epochs": args.epochs,
            "train.batch_size": 128, "train.optimizer": "adamw", "train.lr": 0.003, "train.warmup_epochs": 0,
            "train.precision": "fp32", "train.knn_monitor_queries": args.queries, "eval.knn_k": 20,
        },
        "search": {
            "method.temperature": {"grid": args.temperatures},
            "augment.jitter_strength": {"grid": args.jitter},
        },
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "max_concurrent": args.concurrent,
        "name": "temperature_x_jitter",
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=2000, help="training images taken from CIFAR-10 train")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--width", type=int, default=16, help="convnet_small channel width")
    p.add_argument("--queries", type=int, default=1000, help="held-out images the kNN monitor scores")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.1, 0.5])
    p.add_argument("--jitter", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--concurrent", type=int, default=0, help="trials at once (0 = fit the cluster)")
    p.add_argument("--run-dir", default="runs/bench_sweep")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()
    if not os.environ.get("SSLPIPE_CIFAR10"):
        print("bench/sweep.py: set SSLPIPE_CIFAR10 to the CIFAR-10 image folder (train|test/<class>/*.jpg)",
              file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    from pipelines.sweep import format_table, parse_search_space, run_sweep

    spec = parse_search_space(sweep_document(args), REPO, source="bench/sweep.py")
    t0 = time.time()
    result = run_sweep(spec.base, spec, resume=args.resume, overwrite=not args.resume)
    seconds = time.time() - t0
    keys = list(spec.search)
    out = {
        "bench": "sweep", "dataset": "cifar10", "train_images": args.limit, "epochs": args.epochs,
        "scheduler": "asha", "seconds": round(seconds, 1), "best": {k: result.best[k] for k in keys + ["knn_top1"]},
        "trials": [{k: r[k] for k in ["trial_id", "status", *keys, "knn_top1", "epochs"]} for r in result.rows],
        "report": str(result.report_path),
    }
    print(json.dumps(out, indent=2))
    print(format_table(spec, result.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
