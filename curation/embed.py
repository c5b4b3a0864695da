"""The embedding nets curation uses, and the decode + normalisation an embedder sees.

The Ray Data actor pool that runs an embedder over shards is ``pipelines.embedding``; it takes
a model factory (a picklable callable), so curation stays independent of where the model comes
from: the weights-free ``random_conv_embedder`` here, an sslpipe checkpoint's backbone (built by
``pipelines``), or any torchvision model with local weights.

The weights-free embedder is a fixed random conv net with global average pooling at
three depths. Random conv features already separate images well (a random-init conv net
reaches 0.8 kNN on MNIST), and global pooling makes them nearly blind to the 1-2 px
shifts that move a perceptual hash as far as an unrelated image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from curation.decode import Intensity, decode_to_array


class RandomConvEmbedder(nn.Module):
    """A fixed, seeded random conv net; features = pooled activations of three blocks."""

    def __init__(self, in_channels: int = 3, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        widths = [in_channels, 64, 128, 256]
        convs = [nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths, widths[1:])]
        self.convs = nn.ModuleList(convs)
        with torch.no_grad():
            for conv in convs:
                fan_in = conv.in_channels * 9
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if conv.bias is not None:  # Conv2d's default: it has one
                    conv.bias.zero_()
        self.out_dim = sum(widths[1:])

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for i, conv in enumerate(self.convs):
            x = torch.relu(conv(x))
            feats.append(x.mean(dim=(2, 3)))
            if i < len(self.convs) - 1:
                x = nn.functional.avg_pool2d(x, 2)
        # per-block standardisation so no block dominates the cosine
        return torch.cat([(f - f.mean(1, keepdim=True)) / (f.std(1, keepdim=True) + 1e-6) for f in feats], dim=1)


def random_conv_embedder(channels: int = 3) -> nn.Module:
    """Factory for the weights-free embedder (picklable: a module-level function)."""
    return RandomConvEmbedder(channels).eval()


def decode_for_embedding(data: bytes, size: int, channels: int, intensity: Intensity = "full_range") -> np.ndarray:
    """Float CHW in [0, 1] at ``size`` x ``size``, through the one decode path (16-bit scaled, not clipped)."""
    arr = decode_to_array(data, size, channels, intensity=intensity).astype(np.float32) / 255.0
    return arr.transpose(2, 0, 1)

