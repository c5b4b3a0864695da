"""Which device and precision a training worker picks (pipelines/device.py)."""

from __future__ import annotations

import pytest
import torch

from pipelines.config import ConfigError, load_config
from pipelines.device import autocast, module_device, resolve_precision, train_device

CPU = torch.device("cpu")


def test_explicit_precisions_are_kept_on_any_device() -> None:
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [
    (False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16"),
])
def test_auto_picks_bf16_only_on_cpus_with_native_bf16(monkeypatch, avx512_bf16: bool, amx: bool, expected: str) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert resolve_precision("auto", CPU) == expected


def test_unknown_precision_is_refused_when_the_config_loads() -> None:
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(None, ["train.precision=fp16"])
    with pytest.raises(ValueError, match="auto, fp32 or bf16"):
        resolve_precision("fp16", CPU)


def test_cpu_training_unless_a_gpu_was_asked_for() -> None:
    assert train_device(False) == CPU
    if torch.cuda.is_available():
        assert train_device(True).type == "cuda"
    else:  # asking for a GPU where there is none is a clear error, not a silent CPU run
        with pytest.raises(RuntimeError, match="train.use_gpu"):
            train_device(True)


def test_bf16_autocast_computes_in_bf16_and_fp32_is_a_no_op() -> None:
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)
    with autocast(CPU, "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert conv(x).dtype == torch.float32
    assert conv.weight.dtype == torch.float32  # autocast never touches the weights
    assert module_device(conv) == CPU
    assert module_device(torch.nn.ReLU()) == CPU


def test_sync_batchnorm_on_several_cpu_workers_is_refused_when_the_config_loads() -> None:
    """PyTorch's SyncBatchNorm raises inside DDP on CPU modules; say so before any worker starts."""
    with pytest.raises(ConfigError, match="train.sync_batchnorm.*train.use_gpu=true"):
        load_config(None, ["train.num_workers=2", "train.sync_batchnorm=true"])
    assert load_config(None, ["train.num_workers=1", "train.sync_batchnorm=true"]).train.sync_batchnorm
    assert load_config(None, ["train.num_workers=2", "train.sync_batchnorm=true", "train.use_gpu=true"]).train.use_gpu
