"""The one interface every SSL method implements.

A method is a backbone + heads + a loss + a view recipe (+ optional momentum
teacher). The training loop in ``pipelines`` knows nothing else about it:

    loss, logs = method(views)           # views: list of augmented batches
    features = method.backbone(images)   # what evaluation and curation embed with
    method.on_step_end(step, max_steps)  # EMA teachers, queues, schedules
"""

from __future__ import annotations

from torch import Tensor, nn


class SSLMethod(nn.Module):
    """Base class; subclasses set ``backbone``, ``feature_dim``, ``num_views``
    and implement ``forward``."""

    backbone: nn.Module
    feature_dim: int
    #: how many augmented views of each image ``forward`` expects
    num_views: int = 2
    #: masked-image methods drop tokens inside the encoder, which only a ViT can do
    needs_vit: bool = False

    def forward(self, views: list[Tensor]) -> tuple[Tensor, dict[str, float]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_step_end(self, step: int, max_steps: int) -> None:
        """Hook after each optimizer step (EMA teacher update, queue, schedule)."""

    def check_views(self, views: list[Tensor]) -> None:
        if len(views) != self.num_views:
            raise ValueError(f"{type(self).__name__} expects {self.num_views} views, got {len(views)}")


class TwoViewMethod(SSLMethod):
    """Both views through the same backbone and projector; a subclass gives only the pair loss.

    SimCLR, DCL, Barlow Twins and VICReg differ in nothing but this loss (and their head widths).
    """

    num_views = 2
    projector: nn.Module

    def forward(self, views: list[Tensor]) -> tuple[Tensor, dict[str, float]]:
        self.check_views(views)
        z1 = self.projector(self.backbone(views[0]))
        z2 = self.projector(self.backbone(views[1]))
        loss = self.pair_loss(z1, z2)
        return loss, {"loss": float(loss.detach())}

    def pair_loss(self, z1: Tensor, z2: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
