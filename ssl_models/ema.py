"""Momentum (EMA) teachers, shared by MoCo, BYOL and SiameseIM.

The teacher is a frozen copy of a student module whose weights trail the
student's: ``t <- m * t + (1 - m) * s``. It gives targets that change slowly,
which is what keeps the non-contrastive methods from collapsing to a constant.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` with gradients off.

    Gradients are off so the optimizer never sees the teacher and DDP does not
    expect gradients for it.
    """
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student`` for parameters;
    buffers (BN running statistics) are copied, since averaging running averages
    would only add lag."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    t_params = list(teacher.parameters())
    s_params = list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameter lists")
    for t, s in zip(t_params, s_params):
        t.mul_(momentum).add_(s.detach().to(t.dtype), alpha=1.0 - momentum)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        tb.copy_(sb)


def cosine_momentum(step: int, max_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """BYOL's schedule: ``final - (final - base) * (cos(pi * step / max_steps) + 1) / 2``.

    Starts at ``base`` (teacher follows the student quickly while features are
    poor) and rises to ``final`` (a nearly frozen teacher at the end).
    """
    if max_steps <= 0:
        return base
    progress = min(1.0, max(0.0, step / max_steps))
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
