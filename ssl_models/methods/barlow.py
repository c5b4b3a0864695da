"""Barlow Twins (Zbontar et al. 2021) and Mixed Barlow Twins (Bandara et al. 2023)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ssl_models.heads import mlp_head
from ssl_models.losses.barlow import barlow_twins_loss, mixed_barlow_regulariser
from ssl_models.methods.base import TwoViewMethod


class BarlowTwins(TwoViewMethod):
    """Backbone -> 3-layer projector -> cross-correlation towards identity.

    Paper widths are 8192; the defaults here (2048) suit CIFAR-size runs.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 2048,
        lambda_offdiag: float = 0.0051,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.lambda_offdiag = lambda_offdiag
        self.projector = mlp_head([feature_dim, proj_hidden_dim, proj_hidden_dim, proj_dim])

    def pair_loss(self, z1: Tensor, z2: Tensor) -> Tensor:
        return barlow_twins_loss(z1, z2, self.lambda_offdiag)


class MixedBarlowTwins(BarlowTwins):
    """Barlow Twins + the mixup regulariser on the cross-correlation.

    Each step draws alpha ~ Beta(mix_beta, mix_beta) and a permutation, embeds
    ``alpha * x1 + (1 - alpha) * x2[perm]`` and adds
    ``lambda_offdiag * mixup_scale * regulariser`` (the paper's code uses
    ``lambda * 4`` on CIFAR). The random draws use the method's own generator;
    under DDP seed it identically on every worker so alpha is shared.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 2048,
        lambda_offdiag: float = 0.0051,
        mixup_scale: float = 4.0,
        mix_beta: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            backbone, feature_dim, proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim, lambda_offdiag=lambda_offdiag
        )
        self.mixup_scale = mixup_scale
        self.mix_beta = mix_beta
        # own generators: numpy's for the Beta draw (torch's Beta takes no generator)
        self._rng = np.random.default_rng(seed)
        self._gen = torch.Generator().manual_seed(seed)

    def forward(self, views: list[Tensor]) -> tuple[Tensor, dict[str, float]]:
        self.check_views(views)
        x1, x2 = views
        alpha = float(self._rng.beta(self.mix_beta, self.mix_beta))
        perm = torch.randperm(x1.shape[0], generator=self._gen).to(x1.device)
        xm = alpha * x1 + (1 - alpha) * x2[perm]
        z1, z2, zm = (self.projector(self.backbone(x)) for x in (x1, x2, xm))
        bt = barlow_twins_loss(z1, z2, self.lambda_offdiag)
        reg = mixed_barlow_regulariser(z1, z2, zm, perm, alpha)
        loss = bt + self.lambda_offdiag * self.mixup_scale * reg
        return loss, {"loss": float(loss.detach()), "barlow": float(bt.detach()), "mix_reg": float(reg.detach())}
