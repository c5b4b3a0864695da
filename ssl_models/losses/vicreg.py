"""VICReg (Bardes et al. 2022): variance, invariance and covariance terms.

    L = lambda * MSE(z1, z2) + mu * [v(z1) + v(z2)] / 2 + nu * [c(z1) + c(z2)]
    v(z) = mean_d relu(1 - sqrt(Var(z_d) + eps))          (keeps each dim alive)
    c(z) = sum_{i != j} Cov(z)_ij^2 / D                     (decorrelates dims)

The variance and covariance terms are batch statistics: under DDP they are
computed on projections gathered with gradients (every worker the same global
value) while the invariance term is a per-sample mean over local rows, so the
worker-average equals the single-process loss on the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_models.distributed import gather_with_grad
from ssl_models.losses._precision import fp32_loss


def variance_term(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Hinge on the per-dimension standard deviation (unbiased), target 1."""
    return F.relu(1.0 - torch.sqrt(z.var(0) + eps)).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal covariances, divided by the dimension."""
    z = z - z.mean(0)
    cov = z.T @ z / (z.shape[0] - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.pow(2).sum() / z.shape[1]


@fp32_loss
def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VICReg loss; see the module docstring. Needs a global batch of at least 2."""
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    invariance = F.mse_loss(z1, z2)
    a, b = gather_with_grad(z1), gather_with_grad(z2)
    if a.shape[0] < 2:
        raise ValueError("VICReg needs at least 2 samples in the global batch")
    variance = 0.5 * (variance_term(a, eps) + variance_term(b, eps))
    covariance = covariance_term(a) + covariance_term(b)
    return sim_weight * invariance + var_weight * variance + cov_weight * covariance
