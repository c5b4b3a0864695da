"""What an idle local Ray costs training that runs beside it, on this machine.

Why this exists: on a 2-core node, sslpipe's Ray Train loop runs about 10 % below the same
convolutions run bare, and a profile of the worker shows nothing of ours to cut (issue #6). The
rest is Ray's own processes. Every Ray worker process, busy or idle, wakes every 10 ms for its
signal check (hard-coded in Ray's core worker), and GCS, raylet, the dashboard and the log monitor
wake too. A training run on one node carries Ray Train's actors (controller, placement-group
cleaner, synchronisation actor, dataset manager, preemption watcher), Ray Data's (split
coordinator, stats actor, autoscaling coordinator) and pooled task workers left idle after the
data was read.

This bench measures that cost directly, side by side in one run: one single-thread training
process per core (ResNet-18 with the CIFAR stem, the step of one ``configs/cifar10.yaml`` worker)
runs

- ``none``: with no Ray on the machine,
- ``ray-defaults``: beside an idle local Ray started with Ray's defaults, holding the 8 idle
  actors a training run holds and the pooled workers a data read leaves,
- ``sslpipe-local-normal``: the same, started with sslpipe's local settings (idle pooled workers
  reaped after 10 s, no preemption watcher, so 7 actors) but Linux's normal scheduling policy,
- ``sslpipe-local``: the same as ``pipelines.ray_runtime.ensure_ray`` starts it, whose processes
  also run under ``SCHED_BATCH`` (a waking batch thread does not preempt the running one). The
  pair tells whether the tax is the preemptions Ray's wake-ups force on the training thread, or
  the CPU they use.

Each training process also reports how often it was preempted (involuntary context switches
per second, from ``/proc/self/status``).

Conditions are interleaved over ``--rounds`` to spread machine drift. Prints JSON, then a table.

    python bench/ray_tax.py [--seconds 40] [--rounds 2] [--batch 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: idle actors a one-node training run holds: Ray Train V2's controller, placement-group
#: cleaner, synchronisation actor, dataset manager and preemption watcher; Ray Data's split
#: coordinator, stats actor and autoscaling coordinator
TRAIN_RUN_ACTORS = 8
CONDITIONS = ("none", "ray-defaults", "sslpipe-local-normal", "sslpipe-local")


def stepper(seconds: float, batch: int, precision: str) -> None:
    """One training process: single-thread forward + backward + SGD, prints its step times as JSON."""
    import torch

    from pipelines.device import autocast, resolve_precision
    from ssl_models.backbones import build_backbone

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net, _ = build_backbone("resnet18", in_channels=3, cifar_stem=True, stem_relu=False)
    net = net.to(memory_format=torch.channels_last)
    views = torch.randn(2 * batch, 3, 32, 32).to(memory_format=torch.channels_last)  # two views per image
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    dtype = resolve_precision(precision, torch.device("cpu"))

    def step() -> None:
        with autocast(torch.device("cpu"), dtype):
            loss = net(views).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: oneDNN picks and JITs its kernels
    times: list[float] = []
    switches0 = involuntary_switches()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    preempted_per_s = (involuntary_switches() - switches0) / (time.perf_counter() - t0)
    print(json.dumps({"step_s": times, "precision": str(dtype), "preempted_per_s": preempted_per_s}), flush=True)


def involuntary_switches(pid: int | str = "self") -> int:
    """How often the kernel has taken the CPU from this process's threads so far (all threads summed)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("nonvoluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no nonvoluntary_ctxt_switches line")


def run_steppers(processes: int, seconds: float, batch: int, precision: str) -> list[dict]:
    """Per-process median step time and preemptions per second of ``processes`` steppers run at once."""
    from pipelines.allocator import resolve_allocator

    # the allocator Ray Train workers get (train.allocator=auto), so the step is theirs
    env = {**os.environ, "OMP_NUM_THREADS": "1", **resolve_allocator("auto").env}
    cmd = [sys.executable, __file__, "--stepper", "--seconds", str(seconds), "--batch", str(batch),
           "--precision", precision]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(processes)]
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"a training process failed (exit {proc.returncode}); run with --stepper to see why")
        report = json.loads(out.strip().splitlines()[-1])
        results.append({"median_step_s": statistics.median(report["step_s"]),
                        "preempted_per_s": report["preempted_per_s"]})
    return results


def ray_pids() -> set[int]:
    """Ray's processes alive on this machine (titles as ``bench/cpusplit.py`` classifies them)."""
    from bench.cpusplit import _cpu_seconds_and_title, classify

    tick = os.sysconf("SC_CLK_TCK")
    pids = set()
    for entry in os.listdir("/proc"):
        got = _cpu_seconds_and_title(entry, tick) if entry.isdigit() else None
        if got is not None and classify(got[1], int(entry), os.getpid()) == "ray":
            pids.add(int(entry))
    return pids


def wait_for_ray_to_exit(timeout_s: float = 60.0) -> None:
    """Ray's processes outlive ``ray.shutdown()`` by a few seconds; the next condition starts without them."""
    deadline = time.monotonic() + timeout_s
    while ray_pids() and time.monotonic() < deadline:
        time.sleep(0.5)


def start_idle_ray(condition: str):
    """An idle local Ray as a one-node training run leaves it; returns the actors to keep alive."""
    import ray

    from pipelines.config import RayConfig
    from pipelines.ray_runtime import init_local_ray

    if condition.startswith("sslpipe-local"):
        init_local_ray(RayConfig(local_scheduling="normal" if condition.endswith("-normal") else "batch"),
                       address="local")
        actors = TRAIN_RUN_ACTORS - 1  # no preemption watcher
    else:
        ray.init(address="local", num_cpus=2 * (os.cpu_count() or 1), include_dashboard=True,
                 dashboard_host="127.0.0.1", logging_level="WARNING")
        actors = TRAIN_RUN_ACTORS

    @ray.remote(num_cpus=0)
    class IdleActor:
        def ready(self) -> bool:
            return True

    @ray.remote
    def read_task(i: int) -> int:  # what a data read leaves behind: pooled workers, now idle
        time.sleep(0.5)
        return i

    held = [IdleActor.remote() for _ in range(actors)]
    ray.get([a.ready.remote() for a in held])
    ray.get([read_task.remote(i) for i in range(2 * (os.cpu_count() or 1))])
    time.sleep(12)  # past sslpipe-local's 10 s idle-worker threshold
    return held


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=40.0, help="timed seconds per condition and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128, help="images per process and step (two views each)")
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="training processes (default: one per core)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--stepper", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stepper:
        stepper(args.seconds, args.batch, args.precision)
        return {}
    import ray

    from bench.cpusplit import CpuSplit

    medians: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    preempted: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    ray_share: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    ray_count: dict[str, list[int]] = {c: [] for c in CONDITIONS}
    for rnd in range(args.rounds):
        for condition in CONDITIONS:
            wait_for_ray_to_exit()
            held = start_idle_ray(condition) if condition != "none" else None
            try:
                ray_count[condition].append(len(ray_pids()))
                with CpuSplit() as split:
                    results = run_steppers(args.processes, args.seconds, args.batch, args.precision)
                medians[condition] += [r["median_step_s"] for r in results]
                preempted[condition] += [r["preempted_per_s"] for r in results]
                ray_share[condition].append(split.result()["share_of_machine"]["ray"])
            finally:
                del held
                if ray.is_initialized():
                    ray.shutdown()
            print(f"[ray_tax] round {rnd + 1}/{args.rounds} {condition}: median step "
                  f"{statistics.median(medians[condition][-args.processes:]):.3f}s", file=sys.stderr, flush=True)
    base = statistics.median(medians["none"])
    rows = [{"condition": c, "ray_processes": max(ray_count[c]), "median_step_s": round(statistics.median(medians[c]), 3),
             "throughput_vs_none": round(base / statistics.median(medians[c]), 3),
             "preempted_per_s": round(statistics.median(preempted[c]), 1),
             "ray_share_of_machine": round(statistics.mean(ray_share[c]), 3)} for c in CONDITIONS]
    report = {"processes": args.processes, "batch": args.batch, "seconds": args.seconds, "rounds": args.rounds,
              "cores": os.cpu_count(), "idle_actors_of_a_training_run": TRAIN_RUN_ACTORS, "results": rows}
    print(json.dumps(report))
    print(f"\n{'condition':<20} {'Ray procs':>9} {'median step s':>14} {'x none':>7} {'preempted/s':>12} "
          f"{'Ray CPU share':>14}")
    for r in rows:
        print(f"{r['condition']:<20} {r['ray_processes']:>9} {r['median_step_s']:>14.3f} {r['throughput_vs_none']:>7.3f} "
              f"{r['preempted_per_s']:>12.0f} {r['ray_share_of_machine']:>14.1%}")
    return report


if __name__ == "__main__":
    main()
