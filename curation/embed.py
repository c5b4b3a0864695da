"""The embedding stage: images -> one L2-normalised vector each, on a Ray Data actor pool.

Why an actor pool: the model is built once per actor and reused for every batch, instead
of once per task. The model comes from a factory (a picklable callable), so curation stays
independent of where the model comes from: the weights-free ``random_conv_embedder`` here,
an sslpipe checkpoint's backbone (built by ``pipelines``), or any torchvision model with
local weights.

The weights-free embedder is a fixed random conv net with global average pooling at
three depths. Random conv features already separate images well (a random-init conv net
reaches 0.8 kNN on MNIST), and global pooling makes them nearly blind to the 1-2 px
shifts that move a perceptual hash as far as an unrelated image.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import ray.data
import torch
from ray.data import ActorPoolStrategy
from torch import nn

from curation.decode import Intensity, decode_to_array


class RandomConvEmbedder(nn.Module):
    """A fixed, seeded random conv net; features = pooled activations of three blocks."""

    def __init__(self, in_channels: int = 3, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        widths = [in_channels, 64, 128, 256]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths, widths[1:]))
        with torch.no_grad():
            for conv in self.convs:
                fan_in = conv.in_channels * 9
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
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


class ImageEmbedder:
    """Ray Data callable class: rows with encoded ``image`` -> rows with ``key`` and ``embedding``."""

    def __init__(self, factory: Callable[[], nn.Module], size: int, channels: int, threads: int = 1,
                 intensity: Intensity = "full_range") -> None:
        torch.set_num_threads(threads)
        self.model = factory().eval()
        self.size, self.channels, self.intensity = size, channels, intensity

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.stack([decode_for_embedding(b, self.size, self.channels, self.intensity)
                                       for b in batch["image"]]))
        x = (x - 0.5) / 0.25
        with torch.no_grad():
            z = self.model(x).float()
        z = nn.functional.normalize(z, dim=1)
        return {"key": batch["key"], "embedding": z.numpy().astype(np.float32)}


def embed_dataset(
    ds: ray.data.Dataset, factory: Callable[[], nn.Module], size: int, channels: int, actors: int = 1,
    intensity: Intensity = "full_range",
) -> ray.data.Dataset:
    """``ds`` rows (key, image bytes) -> (key, embedding) through an actor pool of ``actors`` actors."""
    return ds.select_columns(["key", "image"]).map_batches(
        ImageEmbedder,
        fn_constructor_kwargs={"factory": factory, "size": size, "channels": channels, "intensity": intensity},
        compute=ActorPoolStrategy(size=actors),
        batch_size=256,
        num_cpus=1,
    )


def collect_embeddings(ds: ray.data.Dataset) -> tuple[list[str], np.ndarray]:
    """Pull (keys, [N, D] float32) to the driver, sorted by key so results do not depend on read order."""
    keys: list[str] = []
    parts: list[np.ndarray] = []
    for batch in ds.iter_batches(batch_size=4096, batch_format="numpy"):
        keys.extend(str(k) for k in batch["key"])
        parts.append(np.asarray(batch["embedding"], dtype=np.float32))
    if not parts:
        return [], np.zeros((0, 0), np.float32)
    order = np.argsort(np.array(keys, dtype=object))
    return [keys[i] for i in order], np.concatenate(parts)[order]
