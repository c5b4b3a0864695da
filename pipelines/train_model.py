"""The model side of a Train worker: its optimizer, and compiled or eager execution of the backbone."""

from __future__ import annotations

from typing import Any

import torch

from pipelines.config import TrainConfig
from ssl_models.optim import LARS, lars_param_groups


def build_optimizer(method: torch.nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    """``train.optimizer`` over the method's trainable parameters (LARS: its own parameter groups)."""
    params = [p for p in method.parameters() if p.requires_grad]
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    if tc.optimizer == "lars":
        return LARS(lars_param_groups(method), lr=tc.lr, weight_decay=tc.weight_decay)
    return torch.optim.SGD(params, lr=tc.lr, momentum=0.9, weight_decay=tc.weight_decay)


def eager_only() -> Any:
    """Run compiled modules eagerly inside this block: embedding passes (kNN monitor, pruning rounds)
    see eval mode and odd batch sizes, each of which would cost a fresh compile of the backbone."""
    return torch.compiler.set_stance("force_eager")


def compile_backbone(method: torch.nn.Module) -> None:
    """Compile the backbone in place (``nn.Module.compile``): parameters, state-dict keys and therefore
    checkpoints stay exactly those of the eager module, so compiled and eager runs resume each other.
    ``dynamic=False``: training batches all have the worker's local batch size."""
    backbone = method.backbone
    assert isinstance(backbone, torch.nn.Module)
    backbone.compile(dynamic=False)
