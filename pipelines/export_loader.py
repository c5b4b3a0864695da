"""Rebuild an sslpipe backbone from its export folder, with torch, torchvision and safetensors only.

``sslpipe export`` writes this file as ``load_backbone.py`` next to the weights, so an export is
self-contained: it imports nothing of sslpipe. The folder holds

* ``backbone.safetensors``: the backbone's weights and buffers (BatchNorm statistics);
* ``architecture.json``: what to build (``backbone``) and how sslpipe fed it (``input``: image size,
  channels, resize, scale and per-channel mean/std), plus where it came from (``source``);
* ``load_backbone.py``: this file.

Usage::

    from load_backbone import load_backbone
    model, preprocess = load_backbone("EXPORT_DIR")
    features = model(preprocess(images))  # images: uint8 [N, C, H, W] (or [N, H, W, C] with channels_last=True)

or ``python load_backbone.py EXPORT_DIR [IMAGES.npy]`` to print the feature width (and save features).
The features equal sslpipe's evaluation features of the same images (``sslpipe eval`` / kNN).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file
from torch import Tensor, nn

FORMAT = "sslpipe-backbone-export/1"


# --------------------------------------------------------------------------- the networks


class SmallConvNet(nn.Module):
    """sslpipe's ``convnet_small``: three conv-BN-ReLU blocks (max-pool after the first two), global mean."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out, pool in ((in_channels, width, True), (width, 2 * width, True), (2 * width, 4 * width, False)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def _sincos(grid: int, dim: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding of a grid x grid patch layout, [1, grid*grid, dim]."""
    idx = torch.arange(grid * grid)
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    parts = []
    for pos in ((idx // grid).float(), (idx % grid).float()):
        angles = pos[:, None] * omega
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=-1)[None]


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """sslpipe's ViT: patch embedding + fixed sin-cos positions, a CLS token, pre-norm blocks, final LayerNorm;
    the feature is the mean of the patch tokens (``pool="mean"``) or the CLS token (``pool="cls"``)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_hidden: int, pool: str) -> None:
        super().__init__()
        self.pool = pool
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", _sincos(img_size // patch_size, embed_dim), persistent=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        return tokens[:, 1:].mean(1) if self.pool == "mean" else tokens[:, 0]


def _resnet(spec: dict[str, Any]) -> nn.Module:
    """torchvision's ResNet with sslpipe's changes: the CIFAR stem (3x3 stride-1 conv, no max-pool), other input
    channels, no ReLU after the stem (``stem_relu`` false), and no classifier (``fc`` is the identity)."""
    net = getattr(torchvision.models, spec["arch"])(weights=None)
    if not spec["stem_relu"]:
        net.relu = nn.Identity()  # torchvision uses ``net.relu`` in the stem only; every block has its own
    if spec["cifar_stem"]:
        net.conv1 = nn.Conv2d(spec["in_channels"], 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif spec["in_channels"] != 3:
        net.conv1 = nn.Conv2d(spec["in_channels"], 64, 7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return net


def build_backbone(spec: dict[str, Any]) -> nn.Module:
    """The untrained module that ``architecture.json``'s ``backbone`` record describes."""
    family = spec["family"]
    if family == "torchvision_resnet":
        return _resnet(spec)
    if family == "convnet_small":
        return SmallConvNet(spec["in_channels"], spec["width"])
    if family == "vit":
        return VisionTransformer(spec["img_size"], spec["patch_size"], spec["in_channels"], spec["embed_dim"],
                                 spec["depth"], spec["num_heads"], spec["mlp_hidden"], spec["pool"])
    raise ValueError(f"unknown backbone family {family!r} in architecture.json")


# --------------------------------------------------------------------------- the input


def make_preprocess(spec: dict[str, Any]) -> Callable[..., Tensor]:
    """The evaluation view sslpipe feeds the backbone: uint8 -> [0, 1], the largest centred square kept
    (sslpipe decodes evaluation images short side to ``size``, centre square: no squashing), resized to
    ``size`` x ``size`` (bilinear, antialiased), then ``(x - mean) / std`` per channel."""
    size, channels = int(spec["size"]), int(spec["channels"])
    mean = torch.tensor(spec["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec["std"], dtype=torch.float32).view(1, -1, 1, 1)

    def preprocess(images: Tensor, channels_last: bool = False) -> Tensor:
        x = torch.as_tensor(images)
        if x.ndim == 3:  # one image
            x = x[None]
        if channels_last:
            x = x.permute(0, 3, 1, 2)
        if x.shape[1] != channels:
            raise ValueError(f"this backbone takes {channels}-channel images, got shape {tuple(x.shape)}")
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        height, width = x.shape[-2:]
        if height != width:  # centre square, as sslpipe's evaluation decode
            side = min(height, width)
            top, left = (height - side) // 2, (width - side) // 2
            x = x[..., top : top + side, left : left + side]
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (x - mean.to(x.device)) / std.to(x.device)

    return preprocess


def load_backbone(export_dir: str | Path) -> tuple[nn.Module, Callable[..., Tensor]]:
    """(backbone in eval mode, preprocess) from an sslpipe export folder."""
    root = Path(export_dir)
    record = json.loads((root / "architecture.json").read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{root} is not an {FORMAT} folder (architecture.json says {record.get('format')!r})")
    model = build_backbone(record["backbone"])
    model.load_state_dict(load_file(str(root / "backbone.safetensors")), strict=True)
    return model.eval(), make_preprocess(record["input"])


def main(argv: list[str]) -> int:
    """``python load_backbone.py EXPORT_DIR [IMAGES.npy]``: load, print what was loaded, and with a uint8
    image array (NHWC or NCHW) save its features next to it as ``IMAGES.features.npy``."""
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    model, preprocess = load_backbone(argv[0])
    record = json.loads((Path(argv[0]) / "architecture.json").read_text())
    print(f"{record['backbone']['family']} backbone, {record['feature_dim']}-d features, "
          f"input {record['input']['channels']} x {record['input']['size']} x {record['input']['size']}")
    if len(argv) > 1:
        import numpy as np

        images = torch.from_numpy(np.load(argv[1]))
        nhwc = images.shape[1] != record["input"]["channels"]  # NCHW has the channels second
        with torch.no_grad():
            features = model(preprocess(images, channels_last=nhwc))
        out = Path(argv[1]).with_suffix(".features.npy")
        np.save(out, features.numpy())
        print(f"{tuple(features.shape)} features -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
