"""Where a training worker computes, and in which precision.

A Ray Train worker that was given a GPU (``train.use_gpu``) trains on it: the model,
each batch and the view augmentation (``ssl_models.augment`` is device-agnostic) move
there, while the worker's decoded image pool stays in host memory. ``train.precision:
auto`` picks bf16 autocast only where bf16 has native arithmetic: a CUDA GPU that
supports it, or a CPU with AVX512-BF16 or AMX. Without those bf16 is emulated and
*slower* than fp32; with them it is faster (figures: docs/BENCHMARKS.md, ``bench/precision.py``),
so the choice cannot be a fixed default.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]


def train_device(use_gpu: bool) -> torch.device:
    """The device this worker trains on: its Ray Train GPU if it was given one, else the CPU.

    Outside a Ray Train worker (in-process mode, tests) the first visible GPU stands in.
    """
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            "train.use_gpu is true but this worker sees no CUDA GPU; check that the node has GPUs and a CUDA "
            "build of torch, or set train.use_gpu=false to train on CPUs")
    try:
        import ray.train.torch

        return ray.train.torch.get_device()
    except Exception:  # noqa: BLE001 - not inside a Ray Train worker: any GPU will do
        return torch.device("cuda", torch.cuda.current_device())


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: the CPU instructions oneDNN uses for fast bf16 matmuls and convolutions."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """``auto`` becomes bf16 where ``device`` computes bf16 natively, else fp32; fp32/bf16 stay as given."""
    if precision in ("fp32", "bf16"):
        return precision  # type: ignore[return-value]
    if precision != "auto":
        raise ValueError(f"train.precision must be auto, fp32 or bf16, not {precision!r}")
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: Precision) -> AbstractContextManager:
    """bf16 autocast on ``device`` (a no-op context for fp32): weights, optimizer state and
    the losses (``ssl_models.losses._precision``) stay fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's parameters (CPU for a module without any)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))
