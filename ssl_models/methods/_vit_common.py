"""Pieces shared by the masked-image-modelling methods (MAE, SiameseIM): the ViT they need, random
patch masking, the light decoder with its sin-cos position table, and the encoded visible patches
as the decoder's context (``encode_visible``). Each method adds only its queries and its target.

The ViT and decoder keyword arguments stay spelled out in each method's constructor (the same
names as ``resolve_vit``'s, not ``**kwargs``): the config layer passes a method only the keyword
arguments its signature names, and the signature tests hold each key to its default there."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssl_models.vit import Block, VisionTransformer, build_vit, grid_coords, sincos_embed


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


def gather_tokens(tokens: Tensor, idx: Tensor) -> Tensor:
    """``tokens`` [B, L, D] at the patch indices ``idx`` [B, L'] -> [B, L', D]."""
    return tokens.gather(1, idx[..., None].expand(-1, -1, tokens.shape[-1]))


class Decoder(nn.Module):
    """A light transformer over [context tokens, query tokens]; returns the query outputs projected to ``out_dim``.

    ``pos`` [1, grid*grid, dim]: the sin-cos position of every patch of the encoder's grid, a fixed
    table (a non-persistent buffer: not in checkpoints, rebuilt from the config).
    """

    pos: Tensor

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, out_dim: int, grid: int) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.blocks = nn.ModuleList(Block(dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)
        ys, xs = grid_coords(grid)
        self.register_buffer("pos", sincos_embed(ys, xs, dim)[None], persistent=False)

    def forward(self, context: Tensor, queries: Tensor) -> Tensor:
        x = torch.cat([context, queries], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, context.shape[1] :]))


def encode_visible(encoder: VisionTransformer, decoder: Decoder, x: Tensor, mask_ratio: float
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Mask ``x`` at random, encode the visible patches, and make them the decoder's context.

    Returns ``context`` [B, L_keep, dim] (embedded visible tokens + their positions), ``keep``
    [B, L_keep] and ``mask`` [B, L] (True = hidden), as ``random_masking``.
    """
    keep, mask = random_masking(x.shape[0], encoder.num_patches, mask_ratio, x.device)
    tokens = encoder.forward_tokens(x, keep)[:, 1:]  # drop CLS: the decoder works on patches
    pos = decoder.pos.expand(x.shape[0], -1, -1)
    return decoder.embed(tokens) + gather_tokens(pos, keep).to(tokens.dtype), keep, mask
