"""Build ssl_models objects from a PipelineConfig: the one place config meets torch."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch

from pipelines.config import PipelineConfig
from ssl_models.augment import ViewRecipe
from ssl_models.backbones import build_backbone
from ssl_models.methods import METHODS, SSLMethod, build_method

log = logging.getLogger("sslpipe.models")

#: the ViT a masked-image method gets when the config names a CNN backbone
DEFAULT_MIM_VIT = "vit_tiny"


def method_kwargs(cfg: PipelineConfig, num_samples: int | None = None) -> dict[str, Any]:
    """The keyword arguments ``cfg`` gives the method's constructor: the ``method:`` keys it sets, plus
    what the pipeline derives (image size, channels, seed, pool size); the rest keep the method's defaults."""
    accepted = inspect.signature(METHODS[cfg.method.name]).parameters
    kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.method.set_keys().items()}
    derived = {"img_size": cfg.data.image_size, "in_chans": cfg.data.channels, "seed": cfg.seed}
    if num_samples is not None:
        derived["num_samples"] = num_samples
    kwargs.update({k: v for k, v in derived.items() if k in accepted})
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:  # MethodConfig.validate refuses these at load; a mismatch here is a programming error
        raise TypeError(f"{cfg.method.name} takes no {', '.join(unknown)}")
    return kwargs


def resolved_method_hparams(cfg: PipelineConfig, num_samples: int | None = None) -> dict[str, Any]:
    """Every constructor argument of the method with the value it gets (set, derived or default)."""
    params = list(inspect.signature(METHODS[cfg.method.name]).parameters.values())[2:]  # after backbone, feature_dim
    out = {p.name: p.default for p in params}
    out.update(method_kwargs(cfg, num_samples))
    return out


def _needs_vit(method_name: str) -> bool:
    """Whether the registered method masks image patches; the registry holds callables, and a method
    class says so in its ``needs_vit`` attribute."""
    constructor = METHODS[method_name]
    return isinstance(constructor, type) and issubclass(constructor, SSLMethod) and constructor.needs_vit


def build_method_from_config(cfg: PipelineConfig, num_samples: int | None = None) -> SSLMethod:
    """The method at its initialisation for ``cfg.seed`` (the random-init baseline uses this too).

    The constructor gets the ``method:`` keys the config sets and the arguments derived from other sections
    (:func:`method_kwargs`); every other argument keeps the method's own default. MAE and SiameseIM train
    the configured ViT (vit_tiny when the config names a CNN). ``num_samples`` sizes per-sample state
    (iSogCLR's learned temperatures).
    """
    torch.manual_seed(cfg.seed)
    b = cfg.backbone
    name: str = b.name
    if _needs_vit(cfg.method.name) and not name.startswith("vit"):
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
    kwargs = method_kwargs(cfg, num_samples)
    log.info("method %s: %s", cfg.method.name,
             ", ".join(f"{k}={v}" for k, v in resolved_method_hparams(cfg, num_samples).items()))
    return build_method(cfg.method.name, backbone, dim, **kwargs)


def forward_takes_index(method: SSLMethod) -> bool:
    """Methods with per-sample state (iSogCLR) need each sample's global index in ``forward``."""
    return "index" in inspect.signature(method.forward).parameters


def view_recipe(cfg: PipelineConfig) -> ViewRecipe:
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
