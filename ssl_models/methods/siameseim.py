"""SiameseIM-style masked prediction (Tao et al. 2023, "Siamese Image Modeling for
Self-Supervised Vision Representation Learning"), simplified.

Idea kept from the paper: the online branch sees a *masked* crop of one view and
must predict the *dense* features that an EMA target branch computes on a
*different* augmented crop, told only where that crop's patches lie relative to
its own. That couples MIM's spatial detail with the semantic alignment of
Siamese methods (the target is another augmentation, not the same pixels).

What happens in ``forward(views)`` (two views of the same images):
1. Each view is cropped again by the method (random resized crop + flip) so
   the crop geometry is *known*; patch centres of crop 2 are mapped into crop 1's
   patch-grid coordinates (fractional, possibly outside the grid, with a flip)
   and the patch-size ratio between crops is kept.
2. Online: ViT encoder on the visible tokens of masked crop 1 -> decoder whose
   queries are a mask token + sin-cos embedding of those mapped coordinates +
   a linear embedding of the log scale ratio.
3. Target: EMA encoder on the full crop 2 -> patch tokens, LayerNorm-ed (no
   affine) per token.
4. Loss: UniGrad (the paper's loss, ``ssl_models.losses.unigrad``) between each
   predicted token and its target token, plus ``pixel_weight`` times the
   normalised-pixel MSE of crop 2's patches predicted from the same decoder
   output (a linear pixel head).

The pixel term is ours, not the paper's. On the MNIST test bench the feature
target alone stayed below random init while the cross-view pixels, alone or
with UniGrad, beat it (figures and commands: docs/BENCHMARKS.md, "SiameseIM
objective"). Feature distillation from a random EMA teacher gives no signal to start from at this
scale (the paper trains 400+ ImageNet epochs); the cross-view pixel target
grounds the early steps, and UniGrad's push term keeps the feature head from
collapsing meanwhile. ``pixel_weight=0`` gives the paper's objective.

Simplified relative to the paper: no projector/predictor heads on top of the
decoder; relative positions are absolute coordinates in crop 1's frame
(sin-cos) plus a scale embedding, instead of the paper's relative-position
encoding of box offsets; no colour augmentation is done here (it comes from
the views). Use a view recipe without geometric crops (``crop_scale=(1, 1)``,
``flip_prob=0``): the method's own crops are the only geometry it can account for.

Like MAE, a non-ViT ``backbone`` is ignored and a ViT is built from the kwargs.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_models.ema import cosine_momentum, ema_update, make_teacher
from ssl_models.losses.byol import negative_cosine
from ssl_models.losses.mae import mae_loss
from ssl_models.losses.unigrad import unigrad_loss
from ssl_models.methods._vit_common import Decoder, encode_visible, resolve_vit
from ssl_models.methods.base import SSLMethod
from ssl_models.vit import VisionTransformer, grid_coords, sincos_embed


def sample_boxes(n: int, scale: tuple[float, float], gen: torch.Generator | None = None) -> Tensor:
    """Random square-ish crop boxes in normalised [-1, 1] image coordinates.

    Returns [n, 4]: (cx, cy, half_w * flip_sign, half_h), i.e. output coordinate
    u maps to source x = cx + half_w * flip * u (same for y without flip).
    """
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=gen)
    log_r = (torch.rand(n, generator=gen) * 2 - 1) * math.log(4 / 3)
    w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)
    h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    return torch.stack([cx, cy, w * flip, h], dim=1)


def crop(x: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Resample each image's box to ``size x size`` (bilinear)."""
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = boxes[:, 2], boxes[:, 0]
    theta[:, 1, 1], theta[:, 1, 2] = boxes[:, 3], boxes[:, 1]
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def relative_coords(box1: Tensor, box2: Tensor, grid: int) -> tuple[Tensor, Tensor, Tensor]:
    """Where crop 2's patch centres fall in crop 1's patch grid.

    Returns rows, cols [n, grid*grid] (fractional patch units of crop 1) and the
    log patch-size ratio [n, 2] (x, y) of crop 2 to crop 1.
    """
    r, c = grid_coords(grid, box1.device)
    u = (c + 0.5) / grid * 2 - 1  # crop-2 output coords in [-1, 1]
    v = (r + 0.5) / grid * 2 - 1
    xs = box2[:, 0:1] + box2[:, 2:3] * u  # source image coords
    ys = box2[:, 1:2] + box2[:, 3:4] * v
    u1 = (xs - box1[:, 0:1]) / box1[:, 2:3]  # back into crop-1 output coords
    v1 = (ys - box1[:, 1:2]) / box1[:, 3:4]
    cols = (u1 + 1) / 2 * grid - 0.5
    rows = (v1 + 1) / 2 * grid - 0.5
    log_scale = torch.log(torch.stack([box2[:, 2].abs() / box1[:, 2].abs(), box2[:, 3] / box1[:, 3]], dim=1))
    return rows, cols, log_scale


LOSSES = ("unigrad", "cosine")


class SiameseIM(SSLMethod):
    """Masked crop 1 predicts the EMA encoder's dense features (and pixels) of crop 2 (see module docstring)."""

    needs_vit = True
    num_views = 2
    backbone: VisionTransformer
    target_encoder: VisionTransformer  # the EMA copy of ``backbone``

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        vit: str = "vit_tiny",
        img_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        mask_ratio: float = 0.5,
        crop_scale: tuple[float, float] = (0.3, 1.0),
        base_momentum: float = 0.996,
        loss: str = "unigrad",
        neg_weight: float = 0.02,
        pixel_weight: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"siameseim loss must be one of {LOSSES}, got {loss!r}")
        if pixel_weight < 0 or neg_weight < 0:
            raise ValueError(f"pixel_weight and neg_weight must be >= 0, got {pixel_weight}, {neg_weight}")
        encoder = resolve_vit(
            backbone, vit=vit, img_size=img_size, patch_size=patch_size, in_chans=in_chans,
            embed_dim=embed_dim, depth=depth, num_heads=num_heads,
        )
        self.backbone = encoder
        self.feature_dim = encoder.embed_dim
        self.target_encoder = cast(VisionTransformer, make_teacher(encoder))  # a deep copy of ``encoder``
        self.mask_ratio, self.base_momentum = mask_ratio, base_momentum
        self.crop_scale: tuple[float, float] = (crop_scale[0], crop_scale[1])
        self.loss_name, self.neg_weight, self.pixel_weight = loss, neg_weight, pixel_weight
        self.decoder = Decoder(encoder.embed_dim, decoder_dim, decoder_depth, decoder_heads, encoder.embed_dim, encoder.grid)
        self.scale_embed = nn.Linear(2, decoder_dim)
        self.pixel_head = nn.Linear(encoder.embed_dim, encoder.patch_size ** 2 * encoder.in_chans)
        self.decoder_dim = decoder_dim
        self._gen = torch.Generator().manual_seed(seed)

    def forward(self, views: list[Tensor]) -> tuple[Tensor, dict[str, float]]:
        self.check_views(views)
        enc = self.backbone
        n, size = views[0].shape[0], enc.img_size
        box1 = sample_boxes(n, self.crop_scale, self._gen).to(views[0].device, views[0].dtype)
        box2 = sample_boxes(n, self.crop_scale, self._gen).to(views[0].device, views[0].dtype)
        c1, c2 = crop(views[0], box1, size), crop(views[1], box2, size)

        with torch.no_grad():
            target = self.target_encoder.forward_tokens(c2)[:, 1:]
            target = F.layer_norm(target.float(), target.shape[-1:])

        ctx, _, _ = encode_visible(enc, self.decoder, c1, self.mask_ratio)
        rows, cols, log_scale = relative_coords(box1.float(), box2.float(), enc.grid)
        queries = (
            self.decoder.mask_token + sincos_embed(rows, cols, self.decoder_dim) + self.scale_embed(log_scale)[:, None, :]
        ).to(ctx.dtype)
        pred = self.decoder(ctx, queries)
        if self.loss_name == "unigrad":
            feature_loss = unigrad_loss(pred, target, self.neg_weight)
        else:
            feature_loss = negative_cosine(pred, target)
        logs = {"feature_loss": float(feature_loss.detach())}
        loss = feature_loss
        if self.pixel_weight:
            every_patch = torch.ones(n, enc.num_patches, dtype=torch.bool, device=c2.device)
            pixel_loss = mae_loss(self.pixel_head(pred), c2, every_patch, enc.patch_size, True)
            logs["pixel_loss"] = float(pixel_loss.detach())
            loss = loss + self.pixel_weight * pixel_loss
        logs["loss"] = float(loss.detach())
        return loss, logs

    def on_step_end(self, step: int, max_steps: int) -> None:
        ema_update(self.target_encoder, self.backbone, cosine_momentum(step, max_steps, self.base_momentum))
