"""DCL and DCLW (Yeh et al. 2022): SimCLR's architecture with the decoupled loss."""

from __future__ import annotations

from torch import Tensor, nn

from ssl_models.losses.dcl import dcl_loss
from ssl_models.methods.simclr import SimCLR


class DCL(SimCLR):
    """SimCLR's backbone and projection with the DCL loss (positive not in the denominator).

    Dropping the positive from the denominator removes the gradient damping of
    easy positives, which lets DCL train well at small batch sizes.
    """

    weighting: str | None = None

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        temperature: float = 0.1,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        proj_output_bn: bool = False,
    ) -> None:
        super().__init__(backbone, feature_dim, temperature=temperature, proj_hidden_dim=proj_hidden_dim,
                         proj_dim=proj_dim, proj_output_bn=proj_output_bn)
        self.sigma = 0.5

    def pair_loss(self, z1: Tensor, z2: Tensor) -> Tensor:
        return dcl_loss(z1, z2, self.temperature, weighting=self.weighting, sigma=self.sigma)


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
        proj_output_bn: bool = False,
    ) -> None:
        super().__init__(backbone, feature_dim, temperature=temperature, proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim,
                         proj_output_bn=proj_output_bn)
        self.sigma = sigma
