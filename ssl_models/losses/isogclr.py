"""iSogCLR (Qiu et al. 2023, "Not All Semantics are Created Equal: Contrastive
Self-supervised Learning with Automatic Temperature Individualization", ICML).

Each sample i gets its own temperature tau_i, learned from a distributionally
robust (DRO) reading of the contrastive loss. For anchor i with negatives S_i
and h_i(z) = <e_i, z> - <e_i, e_i'> (negative minus positive similarity):

    F_i(w, tau_i) = tau_i * log( mean_{z in S_i} exp(h_i(z) / tau_i) ) + tau_i * rho

rho bounds KL(p_i || uniform) of the worst-case distribution over negatives:
frequent, "easy" semantics end with a large tau, rare ones with a small tau.

The mean inside the log cannot be estimated without bias from a mini-batch, so
(as in SogCLR) a per-sample moving average u_i tracks it across epochs:
u_i <- (1 - gamma) u_i + gamma * g_i(batch). With u_i in place of the mean:

    dF_i/dw   = sum_z exp(h_i(z)/tau_i) / (|S_i| u_i) * dh_i(z)/dw
    dF_i/dtau = log u_i + rho - sum_z exp(h_i(z)/tau_i) / (|S_i| u_i) * h_i(z)/tau_i

We keep u in the log domain (``log_u``), which cannot overflow for small tau.
The returned ``loss`` is a surrogate whose gradient is dF/dw (the weights are
detached); ``objective`` is the value of F itself, for logs.

Where the authors' code (zhqiu/contrastive-learning-iSogCLR ``SogCLR_DRO_Loss``,
LibAUC ``GCLoss_v1``) differs: it averages exp(sim / tau) without the positive's
shift and keeps one u per sample (the mean of its two views'), and it sums the
two views' losses where we average them. On a sample's first visit (u = the
batch mean) the two give the same weights, tau-gradient and, up to that factor
2, the same gradient (tests/ssl_models/test_losses.py); on later visits we
follow the paper's u of exp(h / tau), one per view-anchor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_models.distributed import gather_with_grad, rank
from ssl_models.losses._precision import fp32_loss


@dataclass
class ISogCLROutput:
    """Loss for backward plus the per-sample quantities the method's state needs."""

    loss: torch.Tensor  # scalar surrogate, gradient = dF/dw
    objective: torch.Tensor  # scalar mean F_i, detached, for logs
    log_u: torch.Tensor  # [B, 2] updated log moving averages (view 1 and view 2 anchors)
    tau_grad: torch.Tensor  # [B] dF_i/dtau_i averaged over the two anchors of sample i


def _anchor_terms(
    anchors: torch.Tensor,
    keys: torch.Tensor,
    pos_col: torch.Tensor,
    self_col: torch.Tensor,
    tau: torch.Tensor,
    log_u_prev: torch.Tensor,
    gamma: float,
    rho: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Surrogate, objective, new log u and tau-gradient for one view's anchors, each [B]."""
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    sim = anchors @ keys.T  # [B, 2N]
    h = sim - sim[rows, pos_col][:, None]
    neg = torch.ones_like(h, dtype=torch.bool)
    neg[rows, pos_col] = False
    neg[rows, self_col] = False
    n_neg = keys.shape[0] - 2
    scaled = (h / tau[:, None]).detach().masked_fill(~neg, float("-inf"))  # h/tau over negatives only
    log_g = torch.logsumexp(scaled, dim=1) - math.log(n_neg)
    first = torch.isnan(log_u_prev)
    blended = torch.logaddexp(math.log(1 - gamma) + log_u_prev, math.log(gamma) + log_g) if gamma < 1 else log_g
    log_u = torch.where(first, log_g, blended)
    weights = torch.exp(scaled - log_u[:, None]) / n_neg  # 0 on non-negatives
    surrogate = (weights * h.masked_fill(~neg, 0.0)).sum(1)
    tau_grad = log_u + rho - (weights * scaled.masked_fill(~neg, 0.0)).sum(1)
    objective = tau * (log_g + rho)
    return surrogate, objective, log_u, tau_grad


@fp32_loss
def isogclr_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    tau: torch.Tensor,
    log_u_prev: torch.Tensor,
    gamma: float = 0.9,
    rho: float = 1.0,
) -> ISogCLROutput:
    """iSogCLR loss of this worker's 2B anchors against the global batch.

    Args:
        z1, z2: [B, D] projections of two views (normalised here).
        tau: [B] current temperatures of these samples (treated as constants).
        log_u_prev: [B, 2] previous log moving averages; NaN = never seen (then u = g).
        gamma: moving-average rate of u (1 = use only the current batch).
        rho: KL radius of the DRO constraint.
    """
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    keys = torch.cat([gather_with_grad(z1), gather_with_grad(z2)], dim=0)  # [2N, D]
    total = keys.shape[0] // 2
    idx = torch.arange(z1.shape[0], device=z1.device) + rank() * z1.shape[0]
    s1, o1, u1, g1 = _anchor_terms(z1, keys, idx + total, idx, tau, log_u_prev[:, 0], gamma, rho)
    s2, o2, u2, g2 = _anchor_terms(z2, keys, idx, idx + total, tau, log_u_prev[:, 1], gamma, rho)
    return ISogCLROutput(
        loss=0.5 * (s1.mean() + s2.mean()),
        objective=(0.5 * (o1.mean() + o2.mean())).detach(),
        log_u=torch.stack([u1, u2], dim=1).detach(),
        tau_grad=(0.5 * (g1 + g2)).detach(),
    )
