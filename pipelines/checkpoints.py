"""Checkpoints as files a user hands around: load them safely, evaluate them, export them.

Loading is always ``weights_only=True``: a checkpoint is untrusted input and a pickle
can carry code. Every checkpoint written by ``pretrain`` carries its resolved config,
so it can be rebuilt without the run directory that produced it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import torchvision

from curation.errors import InputError
from pipelines.config import METHOD_KEYS, ConfigError, RunConfig, config_from_dict
from pipelines.models import build_method_from_config

log = logging.getLogger("sslpipe.checkpoints")


def load_checkpoint(path: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """(config, state) of an sslpipe checkpoint; a clear InputError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path} (pass the checkpoint.pt of a run directory)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickled code, truncation, not a torch file
        raise InputError(f"{path} is not a loadable sslpipe checkpoint (weights-only load refused it: "
                         f"{str(exc).splitlines()[0][:160]})") from None
    if not isinstance(state, dict) or "method" not in state or "config" not in state:
        raise InputError(f"{path} is not an sslpipe checkpoint (no method weights and config inside)")
    try:
        return config_from_dict(_without_ignored_method_keys(state["config"])), state
    except ConfigError as exc:
        raise InputError(f"{path}: the config stored in this checkpoint is not valid: {exc}") from None


def _without_ignored_method_keys(config: Any) -> Any:
    """A checkpoint's config without the ``method:`` keys its method does not take.

    Checkpoints written before every method hyperparameter became a key stored ``temperature`` and the
    projector sizes for every method, and the method ignored those it did not take (BYOL's temperature,
    MAE's projector). A config now refuses them, so they are dropped here, which rebuilds exactly the
    model that was trained. Checkpoints written since hold no such keys: their config was validated.
    """
    if not isinstance(config, dict) or not isinstance(config.get("method"), dict):
        return config
    method = config["method"]
    takes = METHOD_KEYS.get(method.get("name", "simclr"))
    if takes is None:
        return config
    ignored = sorted(k for k in method if k != "name" and k not in takes and method[k] is not None)
    if ignored:
        log.info("checkpoint config: %s ignored %s when it was trained; dropped", method.get("name"), ", ".join(ignored))
    return {**config, "method": {k: v for k, v in method.items() if k not in ignored}}


def load_backbone_from_checkpoint(path: str | Path) -> tuple[RunConfig, torch.nn.Module]:
    cfg, state = load_checkpoint(path)
    method = build_method_from_config(cfg)
    try:
        method.load_state_dict(state["method"])
    except (RuntimeError, TypeError, AttributeError) as exc:  # weights of another model, or not a state dict
        raise InputError(f"{path}: its weights do not match the model its config describes "
                         f"({cfg.method.name} on {cfg.backbone.name}): {str(exc).splitlines()[-1].strip()[:200]}") from None
    return cfg, method.backbone


def export_backbone(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the backbone so that it loads without sslpipe installed.

    ResNets: a plain torchvision ``state_dict`` plus the few facts needed to build the
    module (``arch``, ``cifar_stem``, ``in_channels``; ``fc`` is ``Identity``).
    Other backbones: a TorchScript module (``torch.jit.load``).
    """
    cfg, backbone = load_backbone_from_checkpoint(checkpoint)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    backbone.eval()
    # MAE / SiameseIM train a ViT whatever backbone the config names: test the module, not the name
    if isinstance(backbone, torchvision.models.ResNet):
        torch.save({
            "format": "torchvision_state_dict",
            "arch": cfg.backbone.name,
            "cifar_stem": cfg.backbone.cifar_stem,
            "in_channels": cfg.data.channels,
            "image_size": cfg.data.image_size,
            "state_dict": backbone.state_dict(),
        }, tmp)
    else:
        example = torch.zeros(1, cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
        torch.jit.save(torch.jit.trace(backbone, example), str(tmp))
    os.replace(tmp, out)
    return out
