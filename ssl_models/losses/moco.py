"""MoCo's InfoNCE against a queue (He et al. 2020; Chen et al. 2020, MoCo v2) and
MoCHi's synthetic hard negatives (Kalantidis et al. 2020, arXiv:2010.01028).

MoCo replaces in-batch negatives with a queue of keys from past batches, made by
a slowly moving key encoder, so the number of negatives no longer depends on
the batch size. Its loss needs no gather: the queue holds keys from every
worker already (the method gathers keys before enqueueing them).

MoCHi notes that most queue negatives are too easy to teach anything and
mixes, in feature space, the hardest ones (per query, the ``n_hard`` queue
entries most similar to it) into extra negatives:

    h_k  = normalise(alpha_k * n_i + (1 - alpha_k) * n_j),  alpha_k ~ U(0, 1)      (s of them)
    h'_k = normalise(beta_k * q + (1 - beta_k) * n_j),      beta_k ~ U(0, 0.5)     (s' of them)

with n_i != n_j two distinct members of the hard set (mixing an entry with
itself would only repeat it). Synthetic negatives carry no gradient (the
query inside h' is detached), as in the paper: they only enlarge the
denominator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_models.losses._precision import fp32_loss


@fp32_loss
def moco_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    temperature: float = 0.2,
    extra_negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE of each query against its key (positive) and the queue (negatives).

    Args:
        q: [B, D] queries (normalised here).
        k: [B, D] keys from the momentum encoder, detached by the caller.
        queue: [Q, D] normalised negatives.
        temperature: tau (MoCo v2: 0.2).
        extra_negatives: optional [B, S, D] per-query negatives (MoCHi's synthetic ones).

    Returns:
        Scalar mean cross-entropy with the positive at logit 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1)
    logits = [(q * k).sum(1, keepdim=True), q @ queue.T]
    if extra_negatives is not None:
        logits.append(torch.einsum("bd,bsd->bs", q, extra_negatives))
    out = torch.cat(logits, dim=1) / temperature
    return F.cross_entropy(out, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


@dataclass
class MochiDraw:
    """The random choices of one MoCHi step, kept apart so the mixing is a pure function.

    ``pair_i``/``pair_j``: [B, s] positions within the hard set (ordered hardest first), never equal
    to each other; ``alpha``: [B, s]; ``query_j``: [B, s'] positions within the hard set; ``beta``: [B, s'].
    """

    pair_i: torch.Tensor
    pair_j: torch.Tensor
    alpha: torch.Tensor
    query_j: torch.Tensor
    beta: torch.Tensor


def draw_mochi(
    batch: int, n_hard: int, num_mix: int, num_query_mix: int, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> MochiDraw:
    """Sample which hard negatives to mix and with what coefficients.

    Each of the ``num_mix`` pairs is two distinct hard negatives, uniform over the ordered pairs:
    ``pair_j`` is ``pair_i`` shifted by 1 .. n_hard - 1 places (mod n_hard).
    """
    if num_mix > 0 and n_hard < 2:
        raise ValueError(f"MoCHi mixes pairs of distinct hard negatives: needs a hard set of >= 2, got {n_hard}")

    def ints(n: int) -> torch.Tensor:
        return torch.randint(0, n_hard, (batch, n), generator=generator).to(device)

    pair_i = ints(num_mix)
    shift = torch.randint(1, max(n_hard, 2), (batch, num_mix), generator=generator).to(device)
    return MochiDraw(
        pair_i=pair_i,
        pair_j=(pair_i + shift) % n_hard,
        alpha=torch.rand(batch, num_mix, generator=generator).to(device),
        query_j=ints(num_query_mix),
        beta=0.5 * torch.rand(batch, num_query_mix, generator=generator).to(device),
    )


@torch.no_grad()
@fp32_loss
def mochi_negatives(q: torch.Tensor, queue: torch.Tensor, n_hard: int, draw: MochiDraw) -> torch.Tensor:
    """MoCHi's synthetic negatives per query, [B, s + s', D], unit norm, no gradient.

    Args:
        q: [B, D] queries (normalised here, detached).
        queue: [Q, D] normalised queue.
        n_hard: size of each query's hard set (its top-``n_hard`` queue negatives).
        draw: indices into the hard set and mixing coefficients.
    """
    q = F.normalize(q.detach(), dim=1)
    n_hard = min(n_hard, queue.shape[0])
    hard_idx = (q @ queue.T).topk(n_hard, dim=1).indices  # [B, N]
    hard = queue[hard_idx]  # [B, N, D]

    def pick(pos: torch.Tensor) -> torch.Tensor:
        return hard.gather(1, pos[..., None].expand(-1, -1, hard.shape[-1]))

    a = draw.alpha[..., None]
    mixed = a * pick(draw.pair_i) + (1 - a) * pick(draw.pair_j)
    b = draw.beta[..., None]
    with_query = b * q[:, None, :] + (1 - b) * pick(draw.query_j)
    return F.normalize(torch.cat([mixed, with_query], dim=1), dim=-1)
