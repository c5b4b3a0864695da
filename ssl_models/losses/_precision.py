"""Run losses in float32 even inside a bf16 autocast region.

bf16 keeps 8 mantissa bits: a logsumexp over thousands of negatives, a
batch-mean or a D x D cross-correlation summed in bf16 loses the differences
the loss is made of. Backbones and heads gain from bf16; the loss costs little
in fp32, so every loss function is wrapped in ``fp32_loss`` (and listed in
``ssl_models.losses.LOSSES``, which a test runs under bf16 autocast).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def _to_fp32(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float64:
        return x.float()
    return x


def fp32_loss(fn: F) -> F:
    """Decorator: disable autocast and upcast floating tensor arguments to float32."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        device = next(
            (a.device.type for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)), "cpu"
        )
        with torch.autocast(device_type=device, enabled=False):
            return fn(*[_to_fp32(a) for a in args], **{k: _to_fp32(v) for k, v in kwargs.items()})

    wrapper.fp32_loss = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
