"""VICReg (Bardes et al. 2022): invariance + variance + covariance, no negatives, no teacher."""

from __future__ import annotations

from torch import Tensor, nn

from ssl_models.heads import mlp_head
from ssl_models.losses.vicreg import vicreg_loss
from ssl_models.methods.base import TwoViewMethod


class VICReg(TwoViewMethod):
    """Backbone -> 3-layer expander -> VICReg loss (paper weights 25/25/1, widths 8192)."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 2048,
        sim_weight: float = 25.0,
        var_weight: float = 25.0,
        cov_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.weights = (sim_weight, var_weight, cov_weight)
        self.projector = mlp_head([feature_dim, proj_hidden_dim, proj_hidden_dim, proj_dim])

    def pair_loss(self, z1: Tensor, z2: Tensor) -> Tensor:
        return vicreg_loss(z1, z2, *self.weights)
