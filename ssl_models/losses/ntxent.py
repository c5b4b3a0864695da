"""NT-Xent, the normalised-temperature cross-entropy of SimCLR (Chen et al. 2020).

For 2N embeddings of N images (two views each), the anchor ``i`` must pick its
partner view out of all other 2N-1 embeddings of the *global* batch. Under DDP
the negatives are gathered from every worker with gradients, so K workers with a
local batch of B train exactly the objective of one worker with a batch of K*B.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_models.distributed import gather_with_grad, rank
from ssl_models.losses._precision import fp32_loss


@fp32_loss
def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Mean NT-Xent over this worker's 2B anchors against the global batch.

    Args:
        z1, z2: [B, D] projections of the two views of the same B images (row i
            of z1 and row i of z2 are a positive pair). Need not be normalised.
        temperature: softmax temperature tau > 0; small tau weights hard negatives.

    Returns:
        Scalar loss. Averaged over workers (as DDP does with gradients) it equals
        the single-process loss on the concatenated batch.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch = z1.shape[0]
    local = F.normalize(torch.cat([z1, z2], dim=0), dim=1)  # [2B, D]
    all1 = gather_with_grad(F.normalize(z1, dim=1))  # [K*B, D]
    all2 = gather_with_grad(F.normalize(z2, dim=1))
    keys = torch.cat([all1, all2], dim=0)  # [2KB, D]: all view-1 rows, then all view-2 rows
    total = all1.shape[0]

    logits = local @ keys.T / temperature  # [2B, 2KB]
    offset = rank() * batch
    rows = torch.arange(batch, device=z1.device)
    self_idx = torch.cat([rows + offset, rows + offset + total])
    pos_idx = torch.cat([rows + offset + total, rows + offset])
    anchors = torch.arange(2 * batch, device=z1.device)
    logits[anchors, self_idx] = float("-inf")  # an embedding is never its own negative
    return F.cross_entropy(logits, pos_idx)
