"""MAE's reconstruction loss (He et al. 2022): MSE on masked patches only,
against per-patch normalised pixels.

Normalising each target patch by its own mean and variance ("norm_pix_loss")
makes the model predict local structure rather than brightness, which the paper
shows gives better representations. Visible patches are excluded: predicting
what the encoder saw teaches nothing. No batch statistics, so nothing to gather.
"""

from __future__ import annotations

import torch

from ssl_models.losses._precision import fp32_loss


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, L, p*p*C], patches row-major, pixels ordered (py, px, c)."""
    b, c, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"image {h}x{w} is not divisible by patch size {patch_size}")
    gh, gw = h // patch_size, w // patch_size
    x = images.reshape(b, c, gh, patch_size, gw, patch_size)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, gh * gw, patch_size * patch_size * c)


@fp32_loss
def mae_loss(
    pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, patch_size: int, norm_pix: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Mean squared error over the masked patches.

    Args:
        pred: [B, L, p*p*C] predicted pixels for every patch (visible ones are ignored).
        images: [B, C, H, W] the unmasked input.
        mask: [B, L] bool, True where a patch was hidden from the encoder.
        patch_size: p.
        norm_pix: normalise each target patch to zero mean, unit variance.
    """
    target = patchify(images, patch_size)
    if norm_pix:
        mean = target.mean(-1, keepdim=True)
        var = target.var(-1, keepdim=True)
        target = (target - mean) / (var + eps).sqrt()
    per_patch = (pred - target).pow(2).mean(-1)  # [B, L]
    m = mask.to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum().clamp(min=1.0)
