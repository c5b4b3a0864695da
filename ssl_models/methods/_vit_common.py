"""Pieces shared by the masked-image-modelling methods (MAE, SiameseIM)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssl_models.vit import Block, VisionTransformer, build_vit


def resolve_vit(
    backbone: nn.Module,
    *,
    vit: str,
    img_size: int,
    patch_size: int,
    in_chans: int,
    embed_dim: int | None,
    depth: int | None,
    num_heads: int | None,
) -> VisionTransformer:
    """Use ``backbone`` if it is our ViT, else build one from the kwargs.

    MIM needs to drop tokens inside the encoder, which a CNN cannot do, so a
    non-ViT backbone (e.g. the default ResNet the config layer builds) is ignored.
    """
    if isinstance(backbone, VisionTransformer):
        return backbone
    return build_vit(
        vit, img_size=img_size, patch_size=patch_size, in_chans=in_chans,
        embed_dim=embed_dim, depth=depth, num_heads=num_heads,
    )


def random_masking(batch: int, num_patches: int, mask_ratio: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-sample uniform random masking, as MAE: returns ``keep`` [B, L_keep] indices
    (sorted, so kept tokens stay in raster order) and ``mask`` [B, L] bool (True = hidden)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    n_keep = max(1, int(round(num_patches * (1 - mask_ratio))))
    noise = torch.rand(batch, num_patches, device=device)
    keep = noise.argsort(dim=1)[:, :n_keep].sort(dim=1).values
    mask = torch.ones(batch, num_patches, dtype=torch.bool, device=device)
    mask.scatter_(1, keep, False)
    return keep, mask


class Decoder(nn.Module):
    """A light transformer over [context tokens, query tokens]; returns the query outputs projected to ``out_dim``."""

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, out_dim: int) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.blocks = nn.ModuleList(Block(dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)

    def forward(self, context: Tensor, queries: Tensor) -> Tensor:
        x = torch.cat([context, queries], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, context.shape[1] :]))
