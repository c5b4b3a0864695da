"""Barlow Twins (Zbontar et al. 2021) and the Mixed Barlow Twins regulariser
(Bandara et al. 2023, arXiv:2312.02151).

Barlow Twins standardises each projection dimension over the batch and drives
the cross-correlation matrix C = z_a^T z_b / N of the two views towards the
identity:  sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2.

Both terms use batch statistics, so under DDP the projections are gathered with
gradients and every worker computes the loss of the *global* batch (the
standardisation then uses global means and variances, which lightly's
"all-reduce the local C" shortcut does not). With the usual DDP gradient
averaging this trains exactly the single-process objective.

Mixed Barlow Twins adds a mixup regulariser: for x_m = alpha x_a + (1 - alpha) x_b[perm],
a linear embedding would give z_m = alpha z_a + (1 - alpha) z_b[perm], so

    C(m, a) ~ alpha C(a, a) + (1 - alpha) C(b[perm], a)
    C(m, b) ~ alpha C(a, b) + (1 - alpha) C(b[perm], b)

and the squared error of those two relations is penalised. It discourages the
over-fitting (memorising per-sample features) that Barlow Twins shows on small
data sets. The authors' main.py standardises with the unbiased std and no eps;
we standardise both terms as Barlow Twins' own code does (BatchNorm without
affine), which scales every correlation by (B - 1) / B relative to theirs.
"""

from __future__ import annotations

import torch

from ssl_models.distributed import gather_with_grad
from ssl_models.losses._precision import fp32_loss


def batch_standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-dimension (z - mean) / sqrt(biased var + eps): BatchNorm without affine, as in the paper's code."""
    mean = z.mean(0, keepdim=True)
    var = z.var(0, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps)


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def cross_correlation(za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
    """C = standardise(za)^T standardise(zb) / N, [D, D]."""
    return batch_standardise(za).T @ batch_standardise(zb) / za.shape[0]


@fp32_loss
def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambda_offdiag: float = 0.0051) -> torch.Tensor:
    """Barlow Twins loss of the global batch.

    Args:
        z1, z2: [B, D] projections of two views (row i of each from the same image).
        lambda_offdiag: weight of the redundancy-reduction term (paper: 0.0051 for D=8192).
    """
    c = cross_correlation(gather_with_grad(z1), gather_with_grad(z2))
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    return on_diag + lambda_offdiag * off_diagonal(c).pow(2).sum()


@fp32_loss
def mixed_barlow_regulariser(
    z1: torch.Tensor, z2: torch.Tensor, zm: torch.Tensor, perm: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Squared error between C(m, .) and its linear-mixing prediction, summed over both views.

    Args:
        z1, z2: [B, D] projections of the two views.
        zm: [B, D] projection of ``alpha * x1 + (1 - alpha) * x2[perm]``.
        perm: [B] local permutation used to mix (applied before gathering, so it stays local).
        alpha: the mixing coefficient (one per step, shared by all workers).

    Returns:
        Unweighted regulariser; the method scales it (the paper: lambda * 4 on CIFAR).
    """
    a, b = gather_with_grad(z1), gather_with_grad(z2)
    b_perm, m = gather_with_grad(z2[perm]), gather_with_grad(zm)
    c_ma, c_mb = cross_correlation(m, a), cross_correlation(m, b)
    gt_ma = alpha * cross_correlation(a, a) + (1 - alpha) * cross_correlation(b_perm, a)
    gt_mb = alpha * cross_correlation(a, b) + (1 - alpha) * cross_correlation(b_perm, b)
    return (c_ma - gt_ma).pow(2).sum() + (c_mb - gt_mb).pow(2).sum()
