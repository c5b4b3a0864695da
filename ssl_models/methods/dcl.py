"""DCL and DCLW (Yeh et al. 2022): SimCLR's architecture with the decoupled loss."""

from __future__ import annotations

from torch import Tensor, nn

from ssl_models.heads import projection_head
from ssl_models.losses.dcl import dcl_loss
from ssl_models.methods.base import SSLMethod


class DCL(SSLMethod):
    """Backbone -> MLP projection -> DCL loss (positive not in the denominator).

    Dropping the positive from the denominator removes the gradient damping of
    easy positives, which lets DCL train well at small batch sizes.
    """

    num_views = 2
    weighting: str | None = None

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        temperature: float = 0.1,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.temperature = temperature
        self.sigma = 0.5
        self.projector = projection_head(feature_dim, proj_hidden_dim, proj_dim)

    def forward(self, views: list[Tensor]) -> tuple[Tensor, dict[str, float]]:
        self.check_views(views)
        z1 = self.projector(self.backbone(views[0]))
        z2 = self.projector(self.backbone(views[1]))
        loss = dcl_loss(z1, z2, self.temperature, weighting=self.weighting, sigma=self.sigma)
        return loss, {"loss": float(loss.detach())}


class DCLW(DCL):
    """DCL with von Mises-Fisher weighting of the positive term (``sigma`` = 0.5 in the paper)."""

    weighting = "vmf"

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        temperature: float = 0.1,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        sigma: float = 0.5,
    ) -> None:
        super().__init__(backbone, feature_dim, temperature=temperature, proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim)
        self.sigma = sigma
