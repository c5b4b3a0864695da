"""MoCo v2 (Chen et al. 2020) with optional MoCHi hard-negative mixing (Kalantidis et al. 2020).

Queries come from the online encoder, keys from a momentum (EMA) copy; the
negatives are a FIFO queue of past keys. MoCo v2 = MoCo + MLP head + stronger
augmentation + cosine LR; we use the symmetric loss (both views act as query),
a common variant that uses each batch twice.

Shuffle-BN, in its single-process form: the key encoder's BN statistics must
not come from the same set of samples as the query's, or the positive can be
told from the queue by its batch-statistics "signature" (MoCo's BN cheating;
on 28 px digits it drives kNN *below* random init). MoCo shuffles samples
across GPUs; here the keys are computed in ``key_bn_splits`` chunks of a random
permutation of the local batch (each chunk its own BN statistics), which works
with one worker and under DDP alike.

The queue is updated in ``on_step_end`` (the design's hook for queues), from
the keys of the forward passes since the last call, gathered from all workers
so every worker keeps the same queue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_models.distributed import gather_with_grad
from ssl_models.ema import ema_update, make_teacher
from ssl_models.heads import mlp_head
from ssl_models.losses.moco import draw_mochi, mochi_negatives, moco_loss
from ssl_models.methods.base import SSLMethod


class MoCoV2(SSLMethod):
    """MoCo v2; ``mochi=True`` adds MoCHi's synthetic hard negatives.

    MoCHi args: ``mochi_n_hard`` hardest queue negatives per query form the hard
    set; ``mochi_num_mix`` (s) negatives mix two distinct ones of them;
    ``mochi_num_query_mix`` (s') mix the query with one; mixing starts at
    optimizer step ``mochi_start_step`` (default 0: from the first step). The
    queue starts as random unit vectors and holds only real keys after
    ``queue_size / keys per step`` steps; until then part of the hard set is
    that noise. Set ``method.mochi_start_step`` to wait for real keys.
    """

    num_views = 2

    queue: Tensor  # [queue_size, proj_dim] buffer
    queue_ptr: Tensor  # 0-d long buffer

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        temperature: float = 0.2,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        queue_size: int = 65536,
        momentum: float = 0.999,
        symmetric: bool = True,
        mochi: bool = False,
        mochi_n_hard: int = 1024,
        mochi_num_mix: int = 1024,
        mochi_num_query_mix: int = 128,
        mochi_start_step: int = 0,
        key_bn_splits: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.key_bn_splits = key_bn_splits
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.temperature = temperature
        self.momentum = momentum
        self.symmetric = symmetric
        self.mochi = mochi
        self.mochi_n_hard, self.mochi_num_mix, self.mochi_num_query_mix = mochi_n_hard, mochi_num_mix, mochi_num_query_mix
        self.mochi_start_step = mochi_start_step
        self.projector = mlp_head([feature_dim, proj_hidden_dim, proj_dim], batch_norm=False)
        self.key_backbone = make_teacher(backbone)
        self.key_projector = make_teacher(self.projector)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending: list[Tensor] = []
        self._step = 0
        self._gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def _keys(self, x: Tensor) -> Tensor:
        """Keys from shuffled sub-batches (shuffle-BN, see the module docstring), in the input order."""
        perm = torch.randperm(x.shape[0], generator=self._gen).to(x.device)
        chunks = [self.key_projector(self.key_backbone(c)) for c in x[perm].chunk(max(1, self.key_bn_splits))]
        keys = torch.empty_like(torch.cat(chunks))
        keys[perm] = torch.cat(chunks)
        return F.normalize(keys, dim=1)

    def synthetic_negatives(self, q: Tensor) -> Tensor | None:
        """MoCHi's synthetic hard negatives for the queries ``q`` ([B, s + s', D]), or None (no MoCHi, or
        before ``mochi_start_step``)."""
        if not (self.mochi and self._step >= self.mochi_start_step):
            return None
        draw = draw_mochi(
            q.shape[0], min(self.mochi_n_hard, self.queue.shape[0]), self.mochi_num_mix,
            self.mochi_num_query_mix, self._gen, q.device,
        )
        return mochi_negatives(q, self.queue, self.mochi_n_hard, draw)

    def _loss(self, q: Tensor, k: Tensor) -> Tensor:
        return moco_loss(q, k, self.queue.clone(), self.temperature, self.synthetic_negatives(q))

    def forward(self, views: list[Tensor]) -> tuple[Tensor, dict[str, float]]:
        self.check_views(views)
        q1 = self.projector(self.backbone(views[0]))
        k2 = self._keys(views[1])
        loss = self._loss(q1, k2)
        keys = [k2]
        if self.symmetric:
            q2 = self.projector(self.backbone(views[1]))
            k1 = self._keys(views[0])
            loss = 0.5 * (loss + self._loss(q2, k1))
            keys.append(k1)
        if self.training:
            self._pending.extend(keys)
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
        keys = gather_with_grad(keys)
        size = self.queue.shape[0]
        n = min(keys.shape[0], size)
        idx = (int(self.queue_ptr) + torch.arange(n, device=keys.device)) % size
        self.queue[idx] = keys[-n:].to(self.queue.dtype)
        self.queue_ptr.fill_((int(self.queue_ptr) + n) % size)

    def on_step_end(self, step: int, max_steps: int) -> None:
        """Momentum update of the key encoder, then enqueue this step's keys."""
        ema_update(self.key_backbone, self.backbone, self.momentum)
        ema_update(self.key_projector, self.projector, self.momentum)
        for keys in self._pending:
            self._enqueue(keys)
        self._pending.clear()
        self._step = step + 1


class MoCHi(MoCoV2):
    """MoCo v2 with MoCHi on by default, registered as ``mochi``.

    The signature is spelled out (not ``**kwargs``) because the config layer
    passes only the keyword arguments a constructor's signature names.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        temperature: float = 0.2,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        queue_size: int = 65536,
        momentum: float = 0.999,
        symmetric: bool = True,
        mochi_n_hard: int = 1024,
        mochi_num_mix: int = 1024,
        mochi_num_query_mix: int = 128,
        mochi_start_step: int = 0,
        key_bn_splits: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__(
            backbone, feature_dim, temperature=temperature, proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim,
            queue_size=queue_size, momentum=momentum, symmetric=symmetric, mochi=True, mochi_n_hard=mochi_n_hard,
            mochi_num_mix=mochi_num_mix, mochi_num_query_mix=mochi_num_query_mix,
            mochi_start_step=mochi_start_step, key_bn_splits=key_bn_splits, seed=seed,
        )
