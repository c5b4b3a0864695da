"""The C heap allocator under a training step: system malloc (glibc) against tcmalloc and jemalloc.

Each allocator runs the same SimCLR ResNet-18 (CIFAR stem) forward + backward + SGD step in its own
process (``LD_PRELOAD``, as ``pipelines/allocator.py`` gives Ray Train workers), in a non-main thread (Ray
Train V2 runs the train function there, and glibc gives such threads their own arena), with one torch
thread per process and ``--procs`` processes at once (2 = the 2-worker x 1-CPU layout of
``configs/cifar10.yaml``). Allocators alternate round by round, so drift hits all of them alike. Reports
the median step time, its ratio against the system malloc, and minor page faults per step. Prints JSON,
then a table.

    python bench/allocator.py [--batch 128] [--steps 4] [--rounds 2] [--procs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.allocator import allocator_in_use, find_library, resolve_allocator  # noqa: E402

#: issue #6's model and recipe (same overrides as bench/train_overhead.py --model resnet18-cifar)
MODEL = ["backbone.name=resnet18", "backbone.cifar_stem=true", "data.image_size=32", "data.channels=3",
         "method.name=simclr", "method.temperature=0.5", "method.proj_hidden_dim=512", "method.proj_dim=128",
         "augment.blur_prob=0.0"]


def time_steps(batch: int, steps: int) -> dict:
    """In this process: median seconds and minor page faults per training step (the first step left out)."""
    import torch

    from pipelines.config import load_config
    from pipelines.models import build_method_from_config, view_recipe
    from ssl_models.augment import augment_batch

    torch.set_num_threads(1)
    cfg = load_config(None, MODEL)
    out: dict = {}

    def work() -> None:
        method = build_method_from_config(cfg).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        gen = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=gen)
        recipe = view_recipe(cfg)
        seconds, faults = [], []
        for i in range(steps + 1):
            f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            views = [augment_batch(images, recipe, gen).contiguous(memory_format=torch.channels_last)
                     for _ in range(2)]
            loss, _ = method(views)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:  # the first step allocates everything for the first time under every allocator
                seconds.append(time.perf_counter() - t0)
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        out.update(step_s=statistics.median(seconds), faults_per_step=statistics.mean(faults))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return {**out, "allocator_in_use": allocator_in_use()}


def run_round(env: dict[str, str], args) -> list[dict]:
    """``args.procs`` worker processes at once under ``env``; their results."""
    cmd = [sys.executable, __file__, "--worker", "--batch", str(args.batch), "--steps", str(args.steps)]
    procs = [subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
             for _ in range(args.procs)]
    results = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"worker process failed (exit {p.returncode})")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="images per process and step (2 views each)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per process and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--procs", type=int, default=2, help="processes stepping at once, 1 torch thread each")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(time_steps(args.batch, args.steps)))
        return

    allocators = {"system": resolve_allocator("system")}
    for name in ("tcmalloc", "jemalloc"):
        if find_library(name):
            allocators[name] = resolve_allocator(name)
        else:
            print(f"note: {name} not installed, left out", file=sys.stderr)
    runs: dict[str, list[dict]] = {name: [] for name in allocators}
    for r in range(args.rounds):
        for name, allocator in allocators.items():
            runs[name] += run_round(allocator.env, args)
            print(f"round {r + 1}/{args.rounds} {name}: {runs[name][-1]['step_s']:.2f} s/step", file=sys.stderr)
    summary = {}
    for name, results in runs.items():
        used = {res["allocator_in_use"] for res in results}
        if used != {name}:
            raise SystemExit(f"{name} processes ran under {used}: the preload did not take")
        summary[name] = {"step_s": round(statistics.median(res["step_s"] for res in results), 3),
                         "faults_per_step": round(statistics.mean(res["faults_per_step"] for res in results))}
    base = summary["system"]["step_s"]
    for name in summary:
        summary[name]["speedup_vs_system"] = round(base / summary[name]["step_s"], 3)
    report = {"model": "simclr resnet18-cifar", "batch_per_process": args.batch, "procs": args.procs,
              "steps": args.steps, "rounds": args.rounds, "cores": os.cpu_count(), "allocators": summary,
              "libraries": {n: a.library for n, a in allocators.items()}}
    print(json.dumps(report, indent=2))
    print(f"\n{'allocator':<10}{'s/step':>8}{'x system':>10}{'faults/step':>13}")
    for name, s in summary.items():
        print(f"{name:<10}{s['step_s']:>8.2f}{s['speedup_vs_system']:>10.3f}{s['faults_per_step']:>13,}")


if __name__ == "__main__":
    main()
