"""BYOL's regression loss (Grill et al. 2020): negative cosine similarity.

The online prediction p must match the target projection z of the other view.
No negatives, no batch statistics, so nothing to gather: collapse is avoided by
the predictor and the EMA target, not by the loss. ``2 - 2 cos`` in the paper
differs from ``-cos`` only by an affine map; we return ``-cos`` so the value is
comparable with lightly's ``NegativeCosineSimilarity``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_models.losses._precision import fp32_loss


@fp32_loss
def negative_cosine(p: torch.Tensor, z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean of ``-cos(p_i, z_i)`` over rows; the caller detaches the target ``z``.

    Works on any [..., D] shapes (SiameseIM uses it per token).
    """
    return -F.cosine_similarity(p, z, dim=-1, eps=eps).mean()
