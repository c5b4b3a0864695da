"""Checkpoints as files a user hands around: load them safely, evaluate them, export them.

An export is a folder a user can take anywhere: safetensors weights, an architecture record with
the input size and normalisation, and a standalone loader (pipelines/export_loader.py).

Loading is always ``weights_only=True``: a checkpoint is untrusted input and a pickle
can carry code. Every checkpoint written by ``pretrain`` carries its resolved config,
so it can be rebuilt without the run directory that produced it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torchvision

import storage
from curation.errors import InputError
from pipelines import export_loader
from pipelines.config import (
    METHOD_KEYS,
    ConfigError,
    PipelineConfig,
    config_from_dict,
    upgrade_stored_config,
)
from pipelines.models import build_method_from_config, view_recipe
from pipelines.train_checkpoints import CheckpointRefused, read_state
from ssl_models.backbones import SmallConvNet
from ssl_models.vit import VisionTransformer

#: the export folder's format tag (pipelines/export_loader.py reads it)
EXPORT_FORMAT = export_loader.FORMAT

log = logging.getLogger("sslpipe.checkpoints")


def load_checkpoint(path: str | Path) -> tuple[PipelineConfig, dict[str, Any]]:
    """(config, state) of an sslpipe checkpoint, local or in object storage; a clear InputError for anything else."""
    if not storage.is_file(path):
        raise InputError(f"checkpoint not found: {path} (pass the checkpoint.pt of a run directory)")
    try:
        state = read_state(path)
    except CheckpointRefused as exc:
        raise InputError(f"{path} is not a loadable sslpipe checkpoint ({exc})") from None
    if "method" not in state or "config" not in state:
        raise InputError(f"{path} is not an sslpipe checkpoint (no method weights and config inside)")
    try:
        return config_from_dict(_without_ignored_method_keys(upgrade_stored_config(state["config"]))), state
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


def load_backbone_from_checkpoint(path: str | Path) -> tuple[PipelineConfig, torch.nn.Module]:
    cfg, state = load_checkpoint(path)
    method = build_method_from_config(cfg)
    try:
        method.load_state_dict(state["method"])
    except (RuntimeError, TypeError, AttributeError) as exc:  # weights of another model, or not a state dict
        raise InputError(f"{path}: its weights do not match the model its config describes "
                         f"({cfg.method.name} on {cfg.backbone.name}): {str(exc).splitlines()[-1].strip()[:200]}") from None
    return cfg, method.backbone


def architecture_record(cfg: PipelineConfig, backbone: torch.nn.Module) -> dict[str, Any]:
    """What ``export_loader.build_backbone`` needs to rebuild ``backbone``, read off the module itself (so
    MAE's ViT-for-a-CNN-name and every stem change are recorded as trained), plus sslpipe's input view."""
    if isinstance(backbone, torchvision.models.ResNet):
        spec: dict[str, Any] = {
            "family": "torchvision_resnet",
            "arch": "resnet50" if isinstance(backbone.layer1[0], torchvision.models.resnet.Bottleneck) else "resnet18",
            "in_channels": backbone.conv1.in_channels,
            "cifar_stem": backbone.conv1.kernel_size == (3, 3),
            "stem_relu": not isinstance(backbone.relu, torch.nn.Identity),
        }
    elif isinstance(backbone, VisionTransformer):
        spec = {
            "family": "vit", "img_size": backbone.img_size, "patch_size": backbone.patch_size,
            "in_channels": backbone.in_chans, "embed_dim": backbone.embed_dim, "depth": len(backbone.blocks),
            "num_heads": backbone.num_heads, "mlp_hidden": backbone.mlp_hidden,
            "pool": backbone.pool,
        }
    elif isinstance(backbone, SmallConvNet):
        first = backbone.features[0]
        spec = {"family": "convnet_small", "in_channels": first.in_channels, "width": first.out_channels}
    else:  # pragma: no cover - every backbone build_backbone makes is handled above
        raise InputError(f"cannot export a {type(backbone).__name__} backbone")
    recipe = view_recipe(cfg)
    return {
        "format": EXPORT_FORMAT,
        "backbone": spec,
        "feature_dim": _feature_dim(cfg, backbone),
        "input": {
            "size": recipe.size, "channels": cfg.data.channels, "layout": "NCHW float32",
            "scale": "uint8 / 255",
            "resize": "largest centred square, then size x size, bilinear, antialias, align_corners=False",
            "mean": list(recipe.mean), "std": list(recipe.std),
        },
        "source": {"method": cfg.method.name, "backbone_name": cfg.backbone.name, "seed": cfg.seed},
        "weights": "backbone.safetensors",
        "loader": "load_backbone.py (torch, torchvision and safetensors only)",
    }


def _feature_dim(cfg: PipelineConfig, backbone: torch.nn.Module) -> int:
    """Width of the backbone's feature vector, from one forward pass of a blank image."""
    with torch.no_grad():
        was = backbone.training
        backbone.eval()
        out = backbone(torch.zeros(1, cfg.data.channels, cfg.data.image_size, cfg.data.image_size))
        backbone.train(was)
    return int(out.shape[1])


# architecture.json last: it marks a whole export
EXPORT_FILES = ("backbone.safetensors", "load_backbone.py", "architecture.json")


def export_backbone(checkpoint: str | Path, out: str | Path) -> Path | str:
    """Write the backbone to the folder ``out`` so that it loads and computes the same features without sslpipe.

    ``out`` gets ``backbone.safetensors`` (weights and buffers), ``architecture.json`` (what to build, the
    input size and normalisation) and ``load_backbone.py`` (a loader that needs torch, torchvision and
    safetensors only; see pipelines/export_loader.py). ``out`` must not exist, be empty, or hold an earlier
    export, which is replaced. ``checkpoint`` and ``out`` may be object-store uris (``s3://...``), like a
    run directory: a uri ``out`` gets the three files uploaded one by one, ``architecture.json`` last.
    """
    cfg, backbone = load_backbone_from_checkpoint(checkpoint)
    if storage.is_uri(out):
        return _export_to_uri(cfg, backbone, str(out))
    out = storage.local_path(out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / "architecture.json").is_file())):
        raise InputError(f"export folder {out} exists and is not an earlier export: pass a new folder name")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_export(cfg, backbone, tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _export_to_uri(cfg: PipelineConfig, backbone: torch.nn.Module, out: str) -> str:
    """The export folder in object storage: written locally, then each file uploaded atomically."""
    foreign = sorted(set(storage.list_dir(out)) - set(EXPORT_FILES))
    if foreign:
        raise InputError(f"export folder {out} holds {', '.join(foreign[:3])}, so it is not an earlier export: "
                         "pass a new folder name")
    with tempfile.TemporaryDirectory(prefix="sslpipe-export-") as tmp:
        _write_export(cfg, backbone, Path(tmp))
        for name in EXPORT_FILES:
            storage.put_file(Path(tmp) / name, storage.join(out, name))
    return out


def _write_export(cfg: PipelineConfig, backbone: torch.nn.Module, folder: Path) -> None:
    """The three export files into the local folder ``folder``."""
    from safetensors.torch import save_file

    backbone.eval()
    record = architecture_record(cfg, backbone)
    state = {k: v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()}
    save_file(state, str(folder / "backbone.safetensors"), metadata={"format": EXPORT_FORMAT})
    (folder / "architecture.json").write_text(json.dumps(record, indent=1) + "\n")
    shutil.copyfile(Path(export_loader.__file__), folder / "load_backbone.py")
