"""bf16 autocast vs fp32, channels_last vs contiguous, and (--compile) torch.compile vs eager, for one
training step (forward + backward) of ResNet-18 with the CIFAR stem on this CPU.

Why: the design turns bf16 autocast on by default; on CPUs without native bf16
matrix units autocast can be *slower* than fp32, so the choice must be measured
on the machine that trains. Prints one JSON object (machine-readable) and a
table. Usage:

    python bench/precision.py [--batch 128] [--size 32] [--iters 5] [--warmup 2] [--threads N]
    python bench/precision.py --dtypes fp32 --compile --threads 1 --batch 128   # what train.compile buys a worker

The compiled row's ``compile_s`` is its first step (tracing + inductor codegen), paid once per worker
start; it is left out of the median.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

from ssl_models.backbones import build_backbone


def _cpu_flags() -> list[str]:
    """The CPU features that decide bf16 speed (AVX512-BF16, AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})


def time_step(dtype: str, channels_last: bool, batch: int, size: int, iters: int, warmup: int,
              compiled: bool = False) -> dict:
    """Median seconds of one forward + backward (no optimiser step: it is precision-independent)."""
    torch.manual_seed(0)
    net, _ = build_backbone("resnet18", in_channels=3, cifar_stem=True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt).train()
    if compiled:
        net.compile(dynamic=False)  # as pipelines.pretrain.compile_backbone
    x = torch.randn(batch, 3, size, size).to(memory_format=fmt)
    times, first = [], 0.0
    for i in range(warmup + iters):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out = net(x)
            loss = out.float().pow(2).mean()
        loss.backward()
        net.zero_grad(set_to_none=True)
        if i == 0:
            first = time.perf_counter() - start
        if i >= warmup:
            times.append(time.perf_counter() - start)
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss with {dtype}")
    med = statistics.median(times)
    return {
        "dtype": dtype, "channels_last": channels_last, "compiled": compiled, "median_s": med, "min_s": min(times),
        "images_per_s": batch / med, "iters": iters, "compile_s": round(first - med, 1) if compiled else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16 (bf16 is slow on AVX2-only CPUs)")
    ap.add_argument("--compile", action="store_true", help="add torch.compile'd channels_last rows (train.compile)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [d for d in args.dtypes.split(",") if d]
    if not dtypes or set(dtypes) - {"fp32", "bf16"} or dtypes[0] != "fp32":
        ap.error("--dtypes must start with fp32 (the baseline) and name only fp32 and bf16")
    settings = [(dtype, cl, False) for dtype in dtypes for cl in (False, True)]
    settings += [(dtype, True, True) for dtype in dtypes] if args.compile else []
    rows = []
    for dtype, cl, compiled in settings:
        rows.append(time_step(dtype, cl, args.batch, args.size, args.iters, args.warmup, compiled))
        # progress on stderr: on a loaded CPU a full run takes minutes, keep partial figures
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    base = rows[0]["median_s"]
    for r in rows:
        r["speedup_vs_fp32_contiguous"] = base / r["median_s"]
    report = {
        "model": "resnet18 (CIFAR stem)", "batch": args.batch, "size": args.size,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "cpu_flags": _cpu_flags(), "load_avg_1m": os.getloadavg()[0], "results": rows,
    }
    print(json.dumps(report))
    print(f"\n{'dtype':<6} {'channels_last':<14} {'compiled':<9} {'median s/step':>14} {'img/s':>8} {'speedup':>8} "
          f"{'compile s':>10}")
    for r in rows:
        print(f"{r['dtype']:<6} {str(r['channels_last']):<14} {str(r['compiled']):<9} {r['median_s']:>14.3f} "
              f"{r['images_per_s']:>8.1f} {r['speedup_vs_fp32_contiguous']:>8.2f} {r['compile_s']:>10.1f}")


if __name__ == "__main__":
    main()
