"""Helpers for losses that must see the whole global batch under DDP.

Contrastive losses need negatives from every worker. A plain ``all_gather`` cuts
the autograd graph, so the gradient that other workers' anchors send back to our
embeddings would be lost and a 2-worker run would train on a different objective
than 1 worker on the same batch. ``gather_with_grad`` keeps that gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group is up and has more than one member."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients over workers and
    returns this worker's slice, so every worker's loss term reaches every
    embedding it used."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.local_batch = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.local_batch
        return grad[start : start + ctx.local_batch]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all workers along dim 0, differentiably.

    Every worker must pass the same batch size. Without a process group this is
    the identity, so single-process code needs no special case.
    """
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)
