"""A small, readable Vision Transformer (Dosovitskiy et al. 2021) for MAE and SiameseIM.

Why our own instead of torchvision's: masked image modelling needs to run the
encoder on a *subset* of patch tokens (``keep``) and to place tokens at
arbitrary, even fractional, grid positions (SiameseIM's relative positions).
Both are one argument here. Position embeddings are fixed 2-D sin-cos (as in
MAE): they need no training, extend to continuous coordinates, and work on
28-32 px images with a 4 px patch (7x7 or 8x8 tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: name -> (embed_dim, depth, num_heads), from DeiT
VIT_CONFIGS: dict[str, tuple[int, int, int]] = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6)}


def sincos_embed(ys: Tensor, xs: Tensor, dim: int) -> Tensor:
    """2-D sin-cos embedding of (possibly fractional) grid coordinates.

    Args:
        ys, xs: same-shape tensors of row/column positions in patch units.
        dim: embedding width, a multiple of 4 (half for y, half for x).

    Returns:
        ``[*ys.shape, dim]``.
    """
    if dim % 4:
        raise ValueError(f"sin-cos embedding needs dim % 4 == 0, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32, device=ys.device) / quarter))
    out = []
    for pos in (ys, xs):
        angles = pos.float()[..., None] * omega
        out += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(out, dim=-1)


def grid_coords(grid: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Row and column index of each patch of a ``grid x grid`` image, row-major, [grid*grid] each."""
    idx = torch.arange(grid * grid, device=device)
    return (idx // grid).float(), (idx % grid).float()


class Block(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, N, head_dim]
        attn = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT encoder with a CLS token; ``forward`` gives one pooled vector per image.

    ``pool="mean"`` (average of patch tokens) is the default because it gives
    better kNN features for MIM-trained encoders than the CLS token, which MAE's
    loss never trains directly.
    """

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        pool: str = "mean",
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {pool!r}")
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.grid = img_size // patch_size
        self.num_patches = self.grid * self.grid
        self.embed_dim = self.out_dim = embed_dim
        self.pool = pool
        self.num_heads = num_heads
        self.mlp_hidden = int(embed_dim * mlp_ratio)  # each block's MLP width, as Block computes it
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        ys, xs = grid_coords(self.grid)
        self.register_buffer("pos_embed", sincos_embed(ys, xs, embed_dim)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.cls_token, std=0.02)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def patch_tokens(self, x: Tensor) -> Tensor:
        """Embedded patches plus position, [B, L, D], before any transformer block."""
        return self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed

    def forward_tokens(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """Normed output tokens [B, 1 + L', D]: CLS then the kept patches.

        Args:
            x: images [B, C, H, W].
            keep: optional [B, L'] indices of the patches to encode (MAE's visible set).
        """
        tokens = self.patch_tokens(x)
        if keep is not None:
            tokens = tokens.gather(1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.forward_tokens(x)
        return tokens[:, 1:].mean(1) if self.pool == "mean" else tokens[:, 0]


def build_vit(
    name: str = "vit_tiny",
    *,
    img_size: int = 32,
    patch_size: int = 4,
    in_chans: int = 3,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    pool: str = "mean",
) -> VisionTransformer:
    """ViT-Tiny/Small by name; ``embed_dim``/``depth``/``num_heads`` override the
    named size (tests use a 4-block ViT so a CPU run takes seconds)."""
    if name not in VIT_CONFIGS:
        raise ValueError(f"unknown ViT {name!r}; choose one of {', '.join(VIT_CONFIGS)}")
    d, n, h = VIT_CONFIGS[name]
    return VisionTransformer(
        img_size, patch_size, in_chans, embed_dim or d, depth or n, num_heads or h, pool=pool
    )


def num_params(module: nn.Module) -> int:
    """Parameter count, for logs and the ViT size check in tests."""
    return sum(p.numel() for p in module.parameters())


__all__ = ["VisionTransformer", "Block", "build_vit", "sincos_embed", "grid_coords", "VIT_CONFIGS", "num_params"]
