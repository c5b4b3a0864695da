"""Dynamic pruning's ``loss_based`` policy keeps the samples the model finds hardest (SCAN: prune the easy ones)."""

from __future__ import annotations

import torch

from pipelines.dynamic import select_subset
from ssl_models.augment import ViewRecipe


class _PooledPixels(torch.nn.Module):
    """A fixed feature map: the 4x4 average-pooled view plus a constant, so a view's feature moves with
    what the crop shows. A flat image looks the same through every crop (alignment 1); noise does not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return torch.cat([pooled, torch.ones(len(x), 1)], dim=1)


def test_loss_based_keeps_the_least_aligned_samples() -> None:
    """Half the pool is flat images (any two views align perfectly: easy), half is noise (views of different
    crops disagree: hard). Keeping half must keep exactly the noise; a flipped sort keeps the flat ones."""
    g = torch.Generator().manual_seed(0)
    n = 64
    flat = torch.randint(0, 256, (n // 2, 1, 1, 1), generator=g, dtype=torch.uint8).expand(-1, 1, 16, 16)
    noise = torch.randint(0, 256, (n // 2, 1, 16, 16), generator=g, dtype=torch.uint8)
    order = torch.randperm(n, generator=g)  # interleave, so position says nothing
    images = torch.cat([flat, noise])[order].contiguous()
    is_noise = (order >= n // 2).numpy()
    recipe = ViewRecipe(size=16, crop_scale=(0.2, 1.0), flip_prob=0.5, jitter_prob=0.0, grayscale_prob=0.0,
                        blur_prob=0.0, mean=(0.5,), std=(0.5,))
    r = select_subset("loss_based", _PooledPixels(), images, torch.full((n,), -1), recipe, keep_fraction=0.5,
                      subset_for_clustering=n, levels=[], resampling_steps=0, seed=0)
    kept = r.indices.numpy()
    assert len(kept) == n // 2
    assert is_noise[kept].all(), f"kept {int((~is_noise[kept]).sum())} easy (flat) samples"
    assert r.info["mean_alignment_kept"] < r.info["mean_alignment_pruned"]
