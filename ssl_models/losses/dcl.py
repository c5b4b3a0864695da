"""Decoupled contrastive loss, DCL and DCLW (Yeh et al. 2022, arXiv:2110.06848).

NT-Xent's denominator holds the positive pair too, which couples the gradient
of positive and negatives (the "negative-positive coupling" that makes SimCLR
need big batches). DCL drops the positive from the denominator (Eq. 6):

    L_i = -<z_i, z_i'>/tau * w_i + log sum_{j in negatives of i} exp(<z_i, z_j>/tau)

with negatives = every other embedding of the global batch except i and i'.
DCLW weights the positive term by a von Mises-Fisher weighting

    w_i = 2 - N * softmax_j(<z_j, z_j'>/sigma)_i

(mean weight 1; easy positives, already close, get less weight). The softmax is
over the *global* batch of N pairs, so 2 workers equal 1 worker on the whole
batch; with one worker it is exactly lightly's ``DCLWLoss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_models.distributed import gather_with_grad, rank
from ssl_models.losses._precision import fp32_loss


def vmf_weights(z1_all: torch.Tensor, z2_all: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """DCLW's positive weights over the global batch, [N], detached (a weight, not a target)."""
    sim = (z1_all.detach() * z2_all.detach()).sum(1) / sigma
    return 2.0 - z1_all.shape[0] * torch.softmax(sim, dim=0)


def _one_direction(
    anchors: torch.Tensor, same_all: torch.Tensor, other_all: torch.Tensor, offset: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor positive similarity and log-sum-exp over negatives, both [B]."""
    batch = anchors.shape[0]
    rows = torch.arange(batch, device=anchors.device)
    cols = rows + offset
    sim_same = anchors @ same_all.T / temperature  # [B, N]: the same view of other images
    sim_other = anchors @ other_all.T / temperature  # [B, N]: the other view; col i+offset is the positive
    positive = sim_other[rows, cols]
    # remove self and positive: decoupling means the positive is not a negative
    mask = torch.zeros_like(sim_same, dtype=torch.bool)
    mask[rows, cols] = True
    negatives = torch.cat([sim_same.masked_fill(mask, float("-inf")), sim_other.masked_fill(mask, float("-inf"))], 1)
    return positive, torch.logsumexp(negatives, dim=1)


@fp32_loss
def dcl_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.1,
    weighting: str | None = None,
    sigma: float = 0.5,
) -> torch.Tensor:
    """Symmetric DCL (``weighting=None``) or DCLW (``weighting="vmf"``) loss.

    Args:
        z1, z2: [B, D] projections of two views; row i of each is a positive pair.
        temperature: tau > 0.
        weighting: None for DCL, ``"vmf"`` for DCLW.
        sigma: vMF weighting temperature (DCLW only; the paper uses 0.5).

    Returns:
        Scalar: mean over this worker's 2B anchors. Averaged over workers it is the
        single-process loss of the concatenated batch (negatives are gathered
        with gradients).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if weighting not in (None, "vmf"):
        raise ValueError(f"weighting must be None or 'vmf', got {weighting!r}")
    z1 = F.normalize(z1, dim=1)
    z2 = F.normalize(z2, dim=1)
    all1, all2 = gather_with_grad(z1), gather_with_grad(z2)
    batch, offset = z1.shape[0], rank() * z1.shape[0]
    pos1, neg1 = _one_direction(z1, all1, all2, offset, temperature)
    pos2, neg2 = _one_direction(z2, all2, all1, offset, temperature)
    if weighting == "vmf":
        w = vmf_weights(all1, all2, sigma)[offset : offset + batch]
        pos1, pos2 = pos1 * w, pos2 * w
    return 0.5 * ((neg1 - pos1).mean() + (neg2 - pos2).mean())
