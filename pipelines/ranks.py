"""The few collectives a Train worker makes: every rank calls them at the same point, in the same order,
or DDP hangs. Each is a no-op (the local value) when no process group is running (in-process mode)."""

from __future__ import annotations

from typing import Any

import ray
import torch
import torch.distributed as dist


def count_nodes() -> int:
    """How many distinct Ray nodes the workers of this run are on (logged, and reported as a metric)."""
    node = ray.get_runtime_context().get_node_id()
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    ids: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(ids, node)
    return len(set(ids))


def should_stop(stop: bool, device: torch.device) -> bool:
    """Rank 0 decides (time budget); every rank must agree or DDP would hang. The flag lives on the
    training device: NCCL, the process group of GPU workers, moves no CPU tensors."""
    if not (dist.is_available() and dist.is_initialized()):
        return stop
    flag = torch.tensor([1.0 if stop else 0.0], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Each rank's own numbers, summed over all ranks (one all-reduce on the training device: NCCL
    moves no CPU tensors). Metrics that describe the whole run's data (kept samples, samples read,
    bad shards) are such sums, never rank 0's figure times the world size."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


def broadcast_from_rank0(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a pruning round's keep-list)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]

