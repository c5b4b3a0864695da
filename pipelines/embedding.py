"""Images -> embeddings with a model, in the two places sslpipe does it.

- Encoded images in shards (curation's embedding stage): a Ray Data actor pool
  (``embed_dataset``), so the model is built once per actor and reused for every batch instead
  of once per task. The model comes from a factory (a picklable callable): the weights-free
  ``curation.embed.random_conv_embedder``, an sslpipe checkpoint's backbone, or any torchvision
  model with local weights.
- Decoded uint8 images already in host memory (the memory feed's pruning rounds, the online
  monitor, evaluation): ``backbone_features``, chunk by chunk on the backbone's device, so a pool
  larger than the device's memory never moves there whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn

from curation.decode import Intensity
from curation.embed import decode_for_embedding
from pipelines.device import module_device

if TYPE_CHECKING:
    import ray.data

#: images per forward pass when embedding from host memory
FEATURE_BATCH = 512


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
    from ray.data import ActorPoolStrategy

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


@torch.no_grad()
def backbone_features(backbone: nn.Module, images: torch.Tensor, view: Callable[[torch.Tensor], torch.Tensor],
                      *, unit_norm: bool = False, batch_size: int = FEATURE_BATCH) -> torch.Tensor:
    """Float features (on the host) of uint8 NCHW ``images`` (on the host): each chunk moves to the
    backbone's device, goes through ``view`` (the evaluation view, or augmented views) and the
    backbone, and comes back; ``unit_norm`` L2-normalises each feature on the device.
    The caller sets train/eval mode: this only runs the forward passes."""
    device = module_device(backbone)
    out = []
    for start in range(0, len(images), batch_size):
        z = backbone(view(images[start : start + batch_size].to(device))).float()
        out.append((nn.functional.normalize(z, dim=1) if unit_norm else z).cpu())
    return torch.cat(out)
