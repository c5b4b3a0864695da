"""Build ssl_models objects from a RunConfig: the one place config meets torch."""

from __future__ import annotations

import torch

from pipelines.config import RunConfig
from ssl_models.augment import ViewRecipe
from ssl_models.backbones import build_backbone
from ssl_models.methods import SSLMethod, build_method


def build_method_from_config(cfg: RunConfig) -> SSLMethod:
    """The method at its initialisation for ``cfg.seed`` (the random-init baseline uses this too)."""
    torch.manual_seed(cfg.seed)
    backbone, dim = build_backbone(
        cfg.backbone.name, in_channels=cfg.data.channels, cifar_stem=cfg.backbone.cifar_stem, width=cfg.backbone.width
    )
    return build_method(
        cfg.method.name,
        backbone,
        dim,
        temperature=cfg.method.temperature,
        proj_hidden_dim=cfg.method.proj_hidden_dim,
        proj_dim=cfg.method.proj_dim,
    )


def view_recipe(cfg: RunConfig) -> ViewRecipe:
    a = cfg.augment
    c = cfg.data.channels
    return ViewRecipe(
        size=cfg.data.image_size,
        crop_scale=(a.crop_scale_min, a.crop_scale_max),
        flip_prob=a.flip_prob,
        jitter_prob=a.jitter_prob,
        jitter_strength=a.jitter_strength,
        grayscale_prob=a.grayscale_prob,
        blur_prob=a.blur_prob,
        mean=(0.5,) * c,
        std=(0.5,) * c,
    )
