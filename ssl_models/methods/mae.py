"""MAE (He et al. 2022): hide most patches, reconstruct their (normalised) pixels.

The encoder sees only the visible 25 %, which also makes it cheap; a small
decoder gets the encoded visible tokens plus a mask token at every hidden
position and predicts pixels. ``backbone(x)`` is the encoder on the full image,
mean-pooled, which is what kNN and linear probes use.

If the ``backbone`` passed in is not a :class:`~ssl_models.vit.VisionTransformer`
it is ignored and a ViT is built from ``vit``/``img_size``/``patch_size``/
``in_chans`` (+ optional ``embed_dim``/``depth``/``num_heads`` overrides);
``feature_dim`` is then the ViT's width, not the argument.
"""

from __future__ import annotations

from torch import Tensor, nn

from ssl_models.losses.mae import mae_loss
from ssl_models.methods._vit_common import Decoder, encode_visible, gather_tokens, resolve_vit
from ssl_models.methods.base import SSLMethod
from ssl_models.vit import VisionTransformer


class MAE(SSLMethod):
    """Masked autoencoder on one view per image."""

    needs_vit = True
    num_views = 1
    backbone: VisionTransformer

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
        mask_ratio: float = 0.75,
        norm_pix: bool = True,
    ) -> None:
        super().__init__()
        encoder = resolve_vit(
            backbone, vit=vit, img_size=img_size, patch_size=patch_size, in_chans=in_chans,
            embed_dim=embed_dim, depth=depth, num_heads=num_heads,
        )
        self.backbone = encoder
        self.feature_dim = encoder.embed_dim
        self.mask_ratio, self.norm_pix = mask_ratio, norm_pix
        p = encoder.patch_size
        self.decoder = Decoder(encoder.embed_dim, decoder_dim, decoder_depth, decoder_heads, p * p * encoder.in_chans,
                               encoder.grid)

    def forward(self, views: list[Tensor]) -> tuple[Tensor, dict[str, float]]:
        self.check_views(views)
        x = views[0]
        enc, dec = self.backbone, self.decoder
        ctx, keep, mask = encode_visible(enc, dec, x, self.mask_ratio)
        hidden = (~mask).float().argsort(dim=1, stable=True)[:, : enc.num_patches - keep.shape[1]]  # masked ids first
        # as in the paper the decoder sees L tokens: encoded visible ones + a mask token per hidden patch
        pos = dec.pos.expand(x.shape[0], -1, -1)
        queries = dec.mask_token.to(ctx.dtype) + gather_tokens(pos, hidden).to(ctx.dtype)
        pred_hidden = dec(ctx, queries)
        pred = pred_hidden.new_zeros(x.shape[0], enc.num_patches, pred_hidden.shape[-1])
        pred = pred.scatter(1, hidden[..., None].expand(-1, -1, pred.shape[-1]), pred_hidden)
        loss = mae_loss(pred, x, mask, enc.patch_size, self.norm_pix)
        return loss, {"loss": float(loss.detach())}
