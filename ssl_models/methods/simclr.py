"""SimCLR (Chen et al. 2020): two views, a projection head, NT-Xent over the global batch."""

from __future__ import annotations

from torch import Tensor, nn

from ssl_models.heads import projection_head
from ssl_models.losses.ntxent import nt_xent_loss
from ssl_models.methods.base import TwoViewMethod


class SimCLR(TwoViewMethod):
    """Backbone -> MLP projection -> NT-Xent with temperature ``temperature``."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        temperature: float = 0.5,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        proj_output_bn: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.temperature = temperature
        self.projector = projection_head(feature_dim, proj_hidden_dim, proj_dim, output_batch_norm=proj_output_bn)

    def pair_loss(self, z1: Tensor, z2: Tensor) -> Tensor:
        """The contrastive loss of two projected views; variants (DCL) override only this."""
        return nt_xent_loss(z1, z2, self.temperature)
