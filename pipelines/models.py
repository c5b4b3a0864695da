"""Build ssl_models objects from a RunConfig: the one place config meets torch."""

from __future__ import annotations

import inspect
import logging

import torch

from pipelines.config import RunConfig
from ssl_models.augment import ViewRecipe
from ssl_models.backbones import build_backbone
from ssl_models.methods import METHODS, SSLMethod, build_method

log = logging.getLogger("sslpipe.models")

#: the ViT a masked-image method gets when the config names a CNN backbone
DEFAULT_MIM_VIT = "vit_tiny"


def build_method_from_config(cfg: RunConfig, num_samples: int | None = None) -> SSLMethod:
    """The method at its initialisation for ``cfg.seed`` (the random-init baseline uses this too).

    Every method gets the keyword arguments its constructor names, and only those: SimCLR takes
    a temperature, BYOL does not; MAE builds its own ViT from the image size and channels.
    ``num_samples`` sizes per-sample state (iSogCLR's learned temperatures).
    """
    torch.manual_seed(cfg.seed)
    b = cfg.backbone
    name = b.name
    if METHODS[cfg.method.name].needs_vit and not name.startswith("vit"):
        # Said out loud rather than silently: the user asked for a CNN and trains a ViT.
        log.warning("method.name=%s masks image patches, which needs a ViT: backbone.name=%s is replaced by %s "
                    "(patch_size %d); set backbone.name=vit_tiny or vit_small to choose it yourself",
                    cfg.method.name, name, DEFAULT_MIM_VIT, b.patch_size)
        name = DEFAULT_MIM_VIT
    backbone, dim = build_backbone(
        name, in_channels=cfg.data.channels, cifar_stem=b.cifar_stem, width=b.width,
        img_size=cfg.data.image_size, patch_size=b.patch_size, vit_depth=b.vit_depth or None,
        zero_init_residual=b.zero_init_residual, conv_init=b.conv_init, stem_relu=b.stem_relu,
    )
    offered = {
        "temperature": cfg.method.temperature,
        "proj_hidden_dim": cfg.method.proj_hidden_dim,
        "proj_dim": cfg.method.proj_dim,
        "proj_output_bn": cfg.method.proj_output_bn,
        "img_size": cfg.data.image_size,
        "in_chans": cfg.data.channels,
    }
    if num_samples is not None:
        offered["num_samples"] = num_samples
    accepted = inspect.signature(METHODS[cfg.method.name]).parameters
    return build_method(cfg.method.name, backbone, dim, **{k: v for k, v in offered.items() if k in accepted})


def forward_takes_index(method: SSLMethod) -> bool:
    """Methods with per-sample state (iSogCLR) need each sample's global index in ``forward``."""
    return "index" in inspect.signature(method.forward).parameters


def view_recipe(cfg: RunConfig) -> ViewRecipe:
    a = cfg.augment
    mean, std = cfg.data.normalization()
    return ViewRecipe(
        size=cfg.data.image_size,
        crop_scale=(a.crop_scale_min, a.crop_scale_max),
        flip_prob=a.flip_prob,
        jitter_prob=a.jitter_prob,
        jitter_strength=a.jitter_strength,
        grayscale_prob=a.grayscale_prob,
        blur_prob=a.blur_prob,
        mean=mean,
        std=std,
    )
