"""Dynamic dataset pruning during pretraining (the Earth-observation paper behind OceanSAR/Nereus; SCAN).

After a warm-up on the full pool, every few epochs the *current* model re-embeds the pool,
and training continues on a subset until the next round:

- ``cluster_balance``: hierarchical k-means on a random subset of the embeddings, every
  sample assigned to its nearest finest-level centroid, then balanced sampling (Vo et al.)
  keeps ``keep_fraction``: over-represented modes are thinned, rare ones kept whole.
- ``loss_based`` (SCAN-style): samples whose two augmented views the model already maps
  close together (the alignment part of the SSL loss) are easy; the easiest are pruned.

Each Ray Train worker prunes its own in-memory shard. Shards are disjoint random splits of
equal size, so every worker keeps the same number of samples and DDP stays in step, no
images cross the network, and re-embedding costs one forward pass over the local shard.
This replaces the Ray Data actor-pool re-embedding sketched in DESIGN.md: the pool is
already decoded in worker memory, and moving it out and back would cost more than the
forward pass itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from curation.balanced import balanced_sample
from curation.hierarchical import hierarchical_kmeans
from curation.kmeans import assign
from curation.metrics import normalized_entropy
from pipelines.device import module_device
from ssl_models.augment import ViewRecipe, augment_batch, normalize_batch


@dataclass
class PruningRound:
    indices: torch.Tensor  # local indices of the samples to train on until the next round
    info: dict[str, Any]


@torch.no_grad()
def _features(backbone: torch.nn.Module, images: torch.Tensor, recipe: ViewRecipe, views: bool = False,
              gen: torch.Generator | None = None) -> torch.Tensor:
    out = []
    device = module_device(backbone)  # the pool stays in host memory; features come back to it
    for start in range(0, len(images), 512):
        chunk = images[start : start + 512].to(device)
        x = augment_batch(chunk, recipe, gen) if views else normalize_batch(chunk, recipe)
        out.append(torch.nn.functional.normalize(backbone(x).float(), dim=1).cpu())
    return torch.cat(out)


def _levels_for(n: int, levels: list[int]) -> list[int]:
    if levels:
        return [max(1, min(k, n // 2)) for k in levels]
    finest = max(2, min(1000, n // 20))
    out = [finest]
    while out[-1] >= 20 and len(out) < 3:
        out.append(out[-1] // 10)
    return out


def select_subset(
    policy: str,
    backbone: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: ViewRecipe,
    *,
    keep_fraction: float,
    subset_for_clustering: int,
    levels: list[int],
    resampling_steps: int,
    seed: int,
) -> PruningRound:
    """One pruning round on a worker's local pool (uint8 NCHW ``images``)."""
    t0 = time.time()
    was_training = backbone.training
    backbone.eval()
    n = len(images)
    target = max(1, int(round(keep_fraction * n)))
    rng = np.random.default_rng(seed)
    info: dict[str, Any] = {"policy": policy, "pool": n, "kept": target}
    if policy == "cluster_balance":
        feats = _features(backbone, images, recipe).numpy()
        t_embed = time.time() - t0
        feats = feats - feats.mean(0, keepdims=True)
        feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        fit = rng.choice(n, size=min(n, subset_for_clustering), replace=False)
        ks = _levels_for(len(fit), levels)
        hier = hierarchical_kmeans(feats[fit], ks, resampling_steps=resampling_steps, seed=seed)
        finest, _ = assign(feats, hier.centroids[0], spherical=True)
        assignments = [finest]
        for parent in hier.parents:  # carry every point up the tree through its cluster's parent
            assignments.append(parent[assignments[-1]])
        keep = balanced_sample(assignments, target, seed)
        chosen = np.flatnonzero(keep)
        info.update(levels=ks, cluster_entropy_before=normalized_entropy(finest, ks[0]),
                    cluster_entropy_after=normalized_entropy(finest[keep], ks[0]))
    elif policy == "loss_based":
        gen = torch.Generator().manual_seed(seed)
        a = _features(backbone, images, recipe, views=True, gen=gen)
        b = _features(backbone, images, recipe, views=True, gen=gen)
        t_embed = time.time() - t0
        alignment = (a * b).sum(1)  # high = the model already finds this sample easy
        chosen = torch.argsort(alignment)[:target].sort().values.numpy()
        info["mean_alignment_kept"] = float(alignment[chosen].mean())
        info["mean_alignment_pruned"] = float(alignment[np.setdiff1d(np.arange(n), chosen)].mean()) if target < n else 0.0
    else:
        raise ValueError(f"unknown pruning policy {policy!r}; choose cluster_balance or loss_based")
    lab = labels.numpy()
    if (lab >= 0).any():
        k = int(lab.max()) + 1
        info["class_entropy_before"] = normalized_entropy(lab[lab >= 0], k)
        kept_lab = lab[chosen]
        info["class_entropy_after"] = normalized_entropy(kept_lab[kept_lab >= 0], k)
    info["embed_seconds"] = t_embed
    info["round_seconds"] = time.time() - t0
    backbone.train(was_training)
    return PruningRound(torch.from_numpy(np.asarray(chosen, dtype=np.int64)), info)
