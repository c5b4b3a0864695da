"""iSogCLR (Qiu et al. 2023): SimCLR's architecture with individualised temperatures.

Per-sample state lives in buffers indexed by the *dataset sample id*:
``log_u`` [N, 2] (moving averages, one per view-anchor), ``tau`` [N] and the
temperature's momentum ``tau_m`` [N]. ``forward(views, index=ids)`` therefore
needs the ids of the batch's samples (int64, in [0, num_samples)); the
training loop passes them as the keyword ``index``.

Without ``index`` the method still trains, as SogCLR with one *shared*
learned temperature and gamma = 1 (u from the current batch only): a per-sample
state cannot be kept without knowing which sample is which.

Under DDP each worker updates the state of its own samples, then the updates
are all-gathered so every worker holds the same state.
"""

from __future__ import annotations


import torch
from torch import Tensor, nn

from ssl_models.distributed import gather_with_grad
from ssl_models.heads import projection_head
from ssl_models.losses.isogclr import isogclr_loss
from ssl_models.methods.base import SSLMethod


class ISogCLR(SSLMethod):
    """Backbone -> projection -> iSogCLR loss; temperatures updated by momentum SGD on dF/dtau.

    Args beyond the common ones: ``num_samples`` size of the data set (state
    size), ``gamma`` u's moving-average rate, ``rho`` KL radius (target
    KL(p_i || uniform); larger -> smaller temperatures), ``tau_lr`` / ``tau_momentum``
    the temperature optimiser, ``tau_min``/``tau_max`` its box, ``grad_clip`` on dF/dtau.
    ``temperature`` is every sample's initial tau.
    """

    num_views = 2

    # buffers (registered in __init__)
    tau: Tensor
    tau_m: Tensor
    log_u: Tensor
    shared_tau: Tensor
    shared_m: Tensor

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        temperature: float = 0.3,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        num_samples: int = 60000,
        gamma: float = 0.9,
        rho: float = 1.0,
        tau_lr: float = 0.01,
        tau_momentum: float = 0.9,
        tau_min: float = 0.05,
        tau_max: float = 1.0,
        grad_clip: float = 5.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.projector = projection_head(feature_dim, proj_hidden_dim, proj_dim)
        self.gamma, self.rho = gamma, rho
        self.tau_lr, self.tau_momentum, self.grad_clip = tau_lr, tau_momentum, grad_clip
        self.tau_min, self.tau_max = tau_min, tau_max
        self.register_buffer("tau", torch.full((num_samples,), float(temperature)))
        self.register_buffer("tau_m", torch.zeros(num_samples))
        self.register_buffer("log_u", torch.full((num_samples, 2), float("nan")))
        self.register_buffer("shared_tau", torch.tensor(float(temperature)))
        self.register_buffer("shared_m", torch.tensor(0.0))

    def _step_tau(self, tau: Tensor, m: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
        m = (1 - self.tau_momentum) * m + self.tau_momentum * grad.clamp(-self.grad_clip, self.grad_clip)
        return (tau - self.tau_lr * m).clamp(self.tau_min, self.tau_max), m

    def forward(self, views: list[Tensor], index: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """Loss of the batch; ``index`` [B] are the samples' ids (see the module docstring)."""
        self.check_views(views)
        z1 = self.projector(self.backbone(views[0]))
        z2 = self.projector(self.backbone(views[1]))
        b = z1.shape[0]
        if index is None:
            tau = self.shared_tau.expand(b)
            prev = torch.full((b, 2), float("nan"), device=z1.device)
            out = isogclr_loss(z1, z2, tau, prev, gamma=1.0, rho=self.rho)
        else:
            index = index.to(self.tau.device).long()
            tau = self.tau[index]
            out = isogclr_loss(z1, z2, tau, self.log_u[index], gamma=self.gamma, rho=self.rho)
        if self.training:
            self._update_state(index, out.log_u, out.tau_grad)
        logs = {"loss": float(out.loss.detach()), "objective": float(out.objective)}
        logs["tau_mean"] = float(tau.mean())
        return out.loss, logs

    @torch.no_grad()
    def _update_state(self, index: Tensor | None, log_u: Tensor, tau_grad: Tensor) -> None:
        if index is None:
            grad = gather_with_grad(tau_grad).mean()
            new_tau, new_m = self._step_tau(self.shared_tau, self.shared_m, grad)
            self.shared_tau.copy_(new_tau)
            self.shared_m.copy_(new_m)
            return
        new_tau, new_m = self._step_tau(self.tau[index], self.tau_m[index], tau_grad)
        idx, log_u, new_tau, new_m = (gather_with_grad(t) for t in (index, log_u, new_tau, new_m))
        self.log_u[idx] = log_u
        self.tau[idx] = new_tau
        self.tau_m[idx] = new_m


