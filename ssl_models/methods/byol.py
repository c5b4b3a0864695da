"""BYOL (Grill et al. 2020): an online network predicts an EMA target's projection.

No negatives: the asymmetry (predictor on the online side only, stop-gradient
and slowly moving weights on the target side) is what prevents collapse.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssl_models.ema import cosine_momentum, ema_update, make_teacher
from ssl_models.heads import mlp_head
from ssl_models.losses.byol import negative_cosine
from ssl_models.methods.base import SSLMethod


class BYOL(SSLMethod):
    """Online backbone -> projector -> predictor vs. EMA backbone -> projector.

    The momentum follows BYOL's cosine schedule from ``base_momentum`` to 1.
    """

    num_views = 2

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        proj_hidden_dim: int = 4096,
        proj_dim: int = 256,
        pred_hidden_dim: int = 4096,
        base_momentum: float = 0.996,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.base_momentum = base_momentum
        self.projector = mlp_head([feature_dim, proj_hidden_dim, proj_dim])
        self.predictor = mlp_head([proj_dim, pred_hidden_dim, proj_dim])
        self.target_backbone = make_teacher(backbone)
        self.target_projector = make_teacher(self.projector)

    @torch.no_grad()
    def _target(self, x: Tensor) -> Tensor:
        return self.target_projector(self.target_backbone(x))

    def forward(self, views: list[Tensor]) -> tuple[Tensor, dict[str, float]]:
        self.check_views(views)
        p1 = self.predictor(self.projector(self.backbone(views[0])))
        p2 = self.predictor(self.projector(self.backbone(views[1])))
        t1, t2 = self._target(views[0]), self._target(views[1])
        loss = 0.5 * (negative_cosine(p1, t2) + negative_cosine(p2, t1))
        return loss, {"loss": float(loss.detach())}

    def on_step_end(self, step: int, max_steps: int) -> None:
        m = cosine_momentum(step, max_steps, self.base_momentum)
        ema_update(self.target_backbone, self.backbone, m)
        ema_update(self.target_projector, self.projector, m)
