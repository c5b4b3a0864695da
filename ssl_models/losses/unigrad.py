"""UniGrad (Tao et al. 2022, "Exploring the Equivalence of Siamese Self-Supervised
Learning via A Unified Gradient Framework"), the loss SiameseIM trains with.

For L2-normalised predictions u_i and (detached) targets v_i:

    L = mean_i ||u_i - v_i||^2  +  lambda * D * mean_i u_i^T F u_i,
    F = mean_j v_j v_j^T                                   (target correlation, D x D)

Its gradient, -2 v_i + 2 lambda D F u_i, is the form the paper shows BYOL,
SimSiam, MoCo and Barlow Twins all share: pull towards the positive, push away
from the directions the whole batch of targets occupies. The push is what stops
dense prediction from collapsing to one feature; the factor D keeps lambda
independent of the width (u^T F u is about 1/D for isotropic targets).

``F`` is a batch statistic: under DDP it is averaged over workers (a plain
all-reduce; targets carry no gradient), so the worker-average of the loss equals
the single-process loss on the whole batch when workers hold equal batches.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ssl_models.distributed import is_distributed, world_size
from ssl_models.losses._precision import fp32_loss


def target_correlation(v: torch.Tensor) -> torch.Tensor:
    """``mean_j v_j v_j^T`` over rows of ``v`` [N, D], averaged over workers."""
    corr = v.T @ v / v.shape[0]
    if is_distributed():
        corr = corr.contiguous()
        dist.all_reduce(corr)
        corr = corr / world_size()
    return corr


@fp32_loss
def unigrad_loss(pred: torch.Tensor, target: torch.Tensor, neg_weight: float = 0.02) -> torch.Tensor:
    """UniGrad loss over rows of [..., D] predictions and targets (e.g. one row per token).

    ``target`` is detached here: it is the EMA branch's output.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    dim = pred.shape[-1]
    u = F.normalize(pred.reshape(-1, dim), dim=-1)
    v = F.normalize(target.detach().reshape(-1, dim), dim=-1)
    positive = (u - v).pow(2).sum(-1).mean()
    negative = ((u @ target_correlation(v)) * u).sum(-1).mean()
    return positive + neg_weight * dim * negative
