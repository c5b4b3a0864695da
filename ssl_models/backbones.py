"""Encoders that turn an image batch into one feature vector per image.

``build_backbone`` returns the module and its feature width, so heads can be
sized without running a dummy forward pass. ResNets come from torchvision, with
the optional CIFAR stem (3x3 stride-1 conv, no max-pool) that small images need:
the ImageNet stem shrinks a 32 px image to 8 px before the first block.
"""

from __future__ import annotations

from typing import Callable

import torch
import torchvision
from torch import nn

from ssl_models.vit import VIT_CONFIGS, build_vit


class SmallConvNet(nn.Module):
    """Three conv blocks and global average pooling.

    Used by the offline demo: on 28 px digits an untrained ResNet-18 already scores
    a higher kNN, which leaves less room to show what SSL learned, while this net
    starts lower and trains in minutes on 2 CPU cores (figures: docs/BENCHMARKS.md,
    ``bench/code_figures.py random_init_knn``).
    """

    def __init__(self, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            if pool:
                layers.append(nn.MaxPool2d(2))
            return layers

        self.features = nn.Sequential(
            *block(in_channels, width, True),
            *block(width, 2 * width, True),
            *block(2 * width, 4 * width, False),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.out_dim = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _torchvision_resnet(factory: Callable[..., torchvision.models.ResNet], in_channels: int, cifar_stem: bool,
                        zero_init_residual: bool = False, conv_init: str = "kaiming_fan_out",
                        stem_relu: bool = True) -> tuple[nn.Module, int]:
    net = factory(weights=None, zero_init_residual=zero_init_residual)
    if not stem_relu:  # torchvision's ResNet uses ``net.relu`` only in the stem; each block has its own
        net.relu = nn.Identity()
    if cifar_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    if conv_init == "torch_default":
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                module.reset_parameters()
    elif conv_init != "kaiming_fan_out":
        raise ValueError(f"conv_init must be kaiming_fan_out or torch_default, not {conv_init!r}")
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


BACKBONES = ("convnet_small", "resnet18", "resnet50", "vit_tiny", "vit_small")


def build_backbone(
    name: str,
    *,
    in_channels: int = 3,
    cifar_stem: bool = False,
    width: int = 32,
    img_size: int = 32,
    patch_size: int = 4,
    vit_depth: int | None = None,
    zero_init_residual: bool = False,
    conv_init: str = "kaiming_fan_out",
    stem_relu: bool = True,
) -> tuple[nn.Module, int]:
    """Build an encoder by name; returns ``(module, feature_dim)``.

    Weights are always random: pretrained weights would need a download, and the
    point of sslpipe is to learn them. ``zero_init_residual`` (ResNets only) zeroes the
    last BatchNorm scale of every residual block, so each block starts as the identity.
    ``conv_init`` (ResNets only): torchvision's ``kaiming_fan_out`` or ``torch_default``, PyTorch's own
    ``nn.Conv2d`` init, whose weights have 1/3 to 1/6 of the squared norm. Every such conv feeds a
    BatchNorm, so the output does not depend on the scale but the step does: the same learning rate turns
    the weights' direction 3-6x faster from the smaller norm (the effective-LR of scale-invariant weights).
    ``stem_relu=False`` (ResNets only) drops the ReLU after the stem's BatchNorm, as LightlySSL's benchmark
    backbones do (``nn.Sequential`` over ``ResNetGenerator``'s children loses the functional ReLU).
    """
    if name == "convnet_small":
        net = SmallConvNet(in_channels, width)
        return net, net.out_dim
    if name == "resnet18":
        return _torchvision_resnet(torchvision.models.resnet18, in_channels, cifar_stem, zero_init_residual, conv_init,
                                  stem_relu)
    if name == "resnet50":
        return _torchvision_resnet(torchvision.models.resnet50, in_channels, cifar_stem, zero_init_residual, conv_init,
                                  stem_relu)
    if name in VIT_CONFIGS:  # mean-pooled ViT; MAE/SiameseIM take it as their encoder, others as any backbone
        vit = build_vit(name, img_size=img_size, patch_size=patch_size, in_chans=in_channels, depth=vit_depth)
        return vit, vit.embed_dim
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
