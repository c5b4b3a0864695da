"""Each loss equals an independent oracle on random inputs (to 1e-5).

Oracles: lightly's implementations where lightly has the loss; elsewhere a
slow, loop-by-loop reference written from the paper's equation inside the test.
Inputs are float64 so the comparison measures the formula, not rounding.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_models.losses import (
    barlow_twins_loss,
    dcl_loss,
    draw_mochi,
    isogclr_loss,
    mae_loss,
    mixed_barlow_regulariser,
    mochi_negatives,
    moco_loss,
    negative_cosine,
    nt_xent_loss,
    patchify,
    unigrad_loss,
    vicreg_loss,
)

TOL = 1e-5


def _pair(b: int = 12, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=torch.float64), torch.randn(b, d, generator=g, dtype=torch.float64)


def _close(a: torch.Tensor | float, b: torch.Tensor | float) -> None:
    a, b = float(a), float(b)
    assert math.isfinite(a) and abs(a - b) <= TOL * max(1.0, abs(b)), (a, b)


# ---------------------------------------------------------------- lightly oracles


@pytest.fixture(scope="module")
def lightly_loss():
    pytest.importorskip("lightly")
    import lightly.loss

    return lightly.loss


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_ntxent_matches_lightly(lightly_loss, temperature: float) -> None:
    z1, z2 = _pair()
    _close(nt_xent_loss(z1, z2, temperature), lightly_loss.NTXentLoss(temperature=temperature)(z1, z2))


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_dcl_matches_lightly(lightly_loss, temperature: float) -> None:
    z1, z2 = _pair(seed=1)
    _close(dcl_loss(z1, z2, temperature), lightly_loss.DCLLoss(temperature=temperature)(z1, z2))


def test_dclw_matches_lightly(lightly_loss) -> None:
    z1, z2 = _pair(seed=2)
    ours = dcl_loss(z1, z2, 0.2, weighting="vmf", sigma=0.5)
    _close(ours, lightly_loss.DCLWLoss(temperature=0.2, sigma=0.5)(z1, z2))
    assert abs(float(ours) - float(dcl_loss(z1, z2, 0.2))) > 1e-3, "the vMF weighting changed nothing"


def test_barlow_matches_lightly(lightly_loss) -> None:
    z1, z2 = _pair(b=20, d=8, seed=3)
    _close(barlow_twins_loss(z1, z2, 0.0051), lightly_loss.BarlowTwinsLoss(lambda_param=0.0051)(z1, z2))


def test_vicreg_matches_lightly(lightly_loss) -> None:
    z1, z2 = _pair(b=20, d=8, seed=4)
    _close(vicreg_loss(z1, z2), lightly_loss.VICRegLoss()(z1, z2))


def test_negative_cosine_matches_lightly(lightly_loss) -> None:
    p, z = _pair(seed=5)
    _close(negative_cosine(p, z), lightly_loss.NegativeCosineSimilarity()(p, z))


def test_mae_loss_matches_lightly_patchify_and_mse() -> None:
    pytest.importorskip("lightly")
    from lightly.models.utils import patchify as lightly_patchify

    g = torch.Generator().manual_seed(6)
    images = torch.randn(3, 2, 8, 8, generator=g, dtype=torch.float64)
    p = 4
    target = lightly_patchify(images, p)  # [B, L, p*p*C]
    assert torch.equal(patchify(images, p), target)
    pred = torch.randn(target.shape, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]], dtype=torch.bool)
    # reference: normalise each target patch by hand, MSE over masked patches only
    rows_pred, rows_tgt = [], []
    for b in range(3):
        for l in range(4):
            if mask[b, l]:
                t = target[b, l]
                rows_tgt.append((t - t.mean()) / math.sqrt(float(t.var()) + 1e-6))
                rows_pred.append(pred[b, l])
    ref = torch.nn.MSELoss()(torch.stack(rows_pred), torch.stack(rows_tgt))
    _close(mae_loss(pred, images, mask, p), ref)
    raw = torch.nn.MSELoss()(pred[mask], target[mask])
    _close(mae_loss(pred, images, mask, p, norm_pix=False), raw)


# ---------------------------------------------------------------- paper-equation references


def test_moco_loss_matches_reference() -> None:
    g = torch.Generator().manual_seed(7)
    q, k = _pair(b=5, d=8, seed=7)
    queue = F.normalize(torch.randn(9, 8, generator=g, dtype=torch.float64), dim=1)
    extra = F.normalize(torch.randn(5, 3, 8, generator=g, dtype=torch.float64), dim=-1)
    t = 0.2
    total = 0.0
    for i in range(5):
        qi, ki = q[i] / q[i].norm(), k[i] / k[i].norm()
        pos = math.exp(float(qi @ ki) / t)
        negs = sum(math.exp(float(qi @ n) / t) for n in queue) + sum(math.exp(float(qi @ n) / t) for n in extra[i])
        total += -math.log(pos / (pos + negs))
    _close(moco_loss(q, k, queue, t, extra), total / 5)
    assert float(moco_loss(q, k, queue, t)) < float(moco_loss(q, k, queue, t, extra))


def test_mochi_negatives_match_reference() -> None:
    g = torch.Generator().manual_seed(8)
    q = torch.randn(4, 6, generator=g, dtype=torch.float64)
    queue = F.normalize(torch.randn(20, 6, generator=g, dtype=torch.float64), dim=1)
    n_hard = 5
    draw = draw_mochi(4, n_hard, num_mix=3, num_query_mix=2, generator=g)
    out = mochi_negatives(q, queue, n_hard, draw)
    assert out.shape == (4, 5, 6) and not out.requires_grad
    assert float(draw.beta.max()) <= 0.5
    for b in range(4):
        qb = q[b] / q[b].norm()
        sims = [(float(qb @ queue[j]), j) for j in range(20)]
        hard = [j for _, j in sorted(sims, reverse=True)[:n_hard]]  # the n_hard most similar negatives
        for s in range(3):
            a = float(draw.alpha[b, s])
            h = a * queue[hard[draw.pair_i[b, s]]] + (1 - a) * queue[hard[draw.pair_j[b, s]]]
            assert torch.allclose(out[b, s], h / h.norm(), atol=TOL)
        for s in range(2):
            be = float(draw.beta[b, s])
            h = be * qb + (1 - be) * queue[hard[draw.query_j[b, s]]]
            assert torch.allclose(out[b, 3 + s], h / h.norm(), atol=TOL)


def _std(z: torch.Tensor) -> torch.Tensor:
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)


def test_mixed_barlow_regulariser_matches_reference() -> None:
    g = torch.Generator().manual_seed(9)
    b, d = 7, 4
    z1, z2, zm = (torch.randn(b, d, generator=g, dtype=torch.float64) for _ in range(3))
    perm = torch.randperm(b, generator=g)
    alpha = 0.3
    a, bb, m = _std(z1), _std(z2), _std(zm)

    def c(x: torch.Tensor, y: torch.Tensor, i: int, j: int) -> float:
        return sum(float(x[n, i] * y[n, j]) for n in range(b)) / b

    ref = 0.0
    bp = bb[perm]
    for i in range(d):
        for j in range(d):
            ref += (c(m, a, i, j) - (alpha * c(a, a, i, j) + (1 - alpha) * c(bp, a, i, j))) ** 2
            ref += (c(m, bb, i, j) - (alpha * c(a, bb, i, j) + (1 - alpha) * c(bp, bb, i, j))) ** 2
    _close(mixed_barlow_regulariser(z1, z2, zm, perm, alpha), ref)


def _isogclr_reference(z1, z2, tau, log_u_prev, gamma, rho):
    """Per-anchor loops over the iSogCLR equations (module docstring of ssl_models.losses.isogclr)."""
    e = [F.normalize(z1, dim=1), F.normalize(z2, dim=1)]
    b = z1.shape[0]
    allz = torch.cat(e, 0)
    n_neg = 2 * b - 2
    surrogate, new_log_u, tau_grad = 0.0, torch.zeros(b, 2, dtype=z1.dtype), torch.zeros(b, dtype=z1.dtype)
    for v in range(2):
        for i in range(b):
            anchor, positive = e[v][i], e[1 - v][i]
            hs = [anchor @ allz[j] - anchor @ positive for j in range(2 * b) if j not in (v * b + i, (1 - v) * b + i)]
            assert len(hs) == n_neg
            g = sum(math.exp(float(h.detach()) / float(tau[i])) for h in hs) / n_neg
            prev = float(log_u_prev[i, v])
            u = g if math.isnan(prev) else (1 - gamma) * math.exp(prev) + gamma * g
            new_log_u[i, v] = math.log(u)
            w = [math.exp(float(h.detach()) / float(tau[i])) / (n_neg * u) for h in hs]
            surrogate = surrogate + sum(wk * h for wk, h in zip(w, hs)) / (2 * b)
            tau_grad[i] += 0.5 * (math.log(u) + rho - sum(wk * float(h.detach()) / float(tau[i]) for wk, h in zip(w, hs)))
    return surrogate, new_log_u, tau_grad


@pytest.mark.parametrize("first_visit", [True, False])
def test_isogclr_matches_reference(first_visit: bool) -> None:
    b = 5
    z1, z2 = _pair(b=b, d=6, seed=10)
    tau = torch.tensor([0.1, 0.3, 0.5, 0.2, 0.9], dtype=torch.float64)
    prev = torch.full((b, 2), float("nan"), dtype=torch.float64) if first_visit else torch.randn(b, 2, dtype=torch.float64)
    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    r1, r2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    out = isogclr_loss(a1, a2, tau, prev, gamma=0.8, rho=0.7)
    ref_loss, ref_u, ref_grad = _isogclr_reference(r1, r2, tau, prev, 0.8, 0.7)
    _close(out.loss, ref_loss)
    assert torch.allclose(out.log_u, ref_u, atol=TOL)
    assert torch.allclose(out.tau_grad, ref_grad, atol=TOL)
    out.loss.backward()
    ref_loss.backward()
    assert torch.allclose(a1.grad, r1.grad, atol=TOL) and torch.allclose(a2.grad, r2.grad, atol=TOL)


def test_isogclr_gradient_is_dro_gradient_when_u_is_exact() -> None:
    """With gamma = 1 (u = the batch mean) the surrogate's gradient is that of
    tau * log mean exp(h / tau), i.e. the DRO objective itself."""
    z1, z2 = _pair(b=6, d=5, seed=11)
    tau = torch.full((6,), 0.4, dtype=torch.float64)
    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    isogclr_loss(a1, a2, tau, torch.full((6, 2), float("nan"), dtype=torch.float64), gamma=1.0).loss.backward()
    b1, b2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    e = torch.cat([F.normalize(b1, dim=1), F.normalize(b2, dim=1)])
    sim = e @ e.T
    idx = torch.arange(12)
    pos = (idx + 6) % 12
    h = sim - sim[idx, pos][:, None]
    mask = torch.ones(12, 12, dtype=torch.bool)
    mask[idx, idx] = False
    mask[idx, pos] = False
    obj = 0.4 * (torch.logsumexp((h / 0.4).masked_fill(~mask, float("-inf")), 1) - math.log(10))
    obj.mean().backward()
    assert torch.allclose(a1.grad, b1.grad, atol=TOL) and torch.allclose(a2.grad, b2.grad, atol=TOL)


@pytest.mark.parametrize("neg_weight", [0.0, 0.02, 0.5])
def test_unigrad_matches_reference(neg_weight: float) -> None:
    """UniGrad (Tao et al. 2022, eq. for the unified loss) written per sample:
    ||u_i - v_i||^2 + lambda * D * u_i^T F u_i with F = mean_j v_j v_j^T; and its
    gradient w.r.t. u is the paper's -2 v + 2 lambda D F u (on the unit sphere)."""
    pred, target = _pair(b=10, d=8, seed=13)
    pred = pred.reshape(2, 5, 8)  # [batch, tokens, D]: one row per token
    target = target.reshape(2, 5, 8)
    rows_u = [p / p.norm() for p in pred.reshape(-1, 8)]
    rows_v = [t / t.norm() for t in target.reshape(-1, 8)]
    corr = sum(torch.outer(v, v) for v in rows_v) / len(rows_v)
    per_row = [(u - v).pow(2).sum() + neg_weight * 8 * (u @ corr @ u) for u, v in zip(rows_u, rows_v)]
    _close(unigrad_loss(pred, target, neg_weight), sum(per_row) / len(per_row))
    # gradient w.r.t. the normalised prediction, as the paper states it
    u = torch.stack(rows_u).requires_grad_()
    unigrad_loss(u, target.reshape(-1, 8), neg_weight).backward()
    expected = (-2 * torch.stack(rows_v) + 2 * neg_weight * 8 * torch.stack(rows_u) @ corr) / len(rows_u)
    radial = (expected * u.detach()).sum(-1, keepdim=True) * u.detach()  # normalisation removes the radial part
    assert torch.allclose(u.grad, expected - radial, atol=TOL)
    assert target.grad is None


def _autocast_cases() -> dict[str, tuple]:
    """(loss, args, kwargs) for every registered loss on random 256 x 128 float32 inputs."""
    g = torch.Generator().manual_seed(12)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    b, d = 256, 128
    z1, z2, zm = rand(b, d), rand(b, d), rand(b, d)
    queue = F.normalize(rand(1024, d), dim=1)
    draw = draw_mochi(b, 64, num_mix=32, num_query_mix=8, generator=g)
    mask = torch.rand(b, 4, generator=g) < 0.75
    return {
        "nt_xent_loss": (nt_xent_loss, (z1, z2, 0.1), {}),
        "dcl_loss": (dcl_loss, (z1, z2, 0.1), {"weighting": "vmf"}),
        "moco_loss": (moco_loss, (z1, z2, queue, 0.2, F.normalize(rand(b, 8, d), dim=-1)), {}),
        "mochi_negatives": (mochi_negatives, (z1, queue, 64, draw), {}),
        "negative_cosine": (negative_cosine, (z1, z2), {}),
        "barlow_twins_loss": (barlow_twins_loss, (z1, z2), {}),
        "mixed_barlow_regulariser": (mixed_barlow_regulariser, (z1, z2, zm, torch.randperm(b, generator=g), 0.3), {}),
        "vicreg_loss": (vicreg_loss, (z1, z2), {}),
        "isogclr_loss": (isogclr_loss, (z1, z2, 0.05 + torch.rand(b, generator=g), rand(b, 2)), {}),
        "mae_loss": (mae_loss, (rand(b, 4, 32), rand(b, 2, 8, 8), mask, 4), {}),
        "unigrad_loss": (unigrad_loss, (z1.reshape(b, 2, 64), z2.reshape(b, 2, 64)), {}),
    }


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [v for v in vars(out).values() if isinstance(v, torch.Tensor)]  # e.g. ISogCLROutput


class _MatmulDtypes(torch.overrides.TorchFunctionMode):
    """Records the dtype of every matrix product (and cosine similarity) computed while it is active."""

    PRODUCTS = {torch.matmul, torch.mm, torch.bmm, torch.einsum, torch.Tensor.matmul, torch.Tensor.mm,
                torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.nn.functional.linear,
                torch.nn.functional.cosine_similarity, torch.cosine_similarity}

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.PRODUCTS and isinstance(out, torch.Tensor):
            self.dtypes.append(out.dtype)
        return out


def test_every_registered_loss_is_fp32_under_bf16_autocast() -> None:
    """Under CPU bf16 autocast each loss computes its similarity / correlation matrices in float32 and
    returns the float32 value to 1e-5 (a logsumexp over 2B-1 negatives in bf16 is off by ~3e-4)."""
    from ssl_models.losses import LOSSES

    cases = _autocast_cases()
    assert set(cases) == set(LOSSES), "every registered loss needs an autocast case here"
    for name, (fn, args, kwargs) in cases.items():
        assert fn is LOSSES[name] and getattr(fn, "fp32_loss", False), f"{name} is not wrapped in fp32_loss"
        reference = _tensors(fn(*args, **kwargs))
        recorder = _MatmulDtypes()
        with torch.autocast("cpu", dtype=torch.bfloat16), recorder:
            under = _tensors(fn(*args, **kwargs))
        assert recorder.dtypes and set(recorder.dtypes) == {torch.float32}, (name, recorder.dtypes)
        for got, want in zip(under, reference):
            assert got.dtype == want.dtype, (name, got.dtype)
            err = float((got.double() - want.double()).abs().nan_to_num(0.0).max())
            assert err <= 1e-5 * max(1.0, float(want.double().abs().nan_to_num(0.0).max())), (name, err)


def test_invalid_arguments_raise() -> None:
    z1, z2 = _pair()
    with pytest.raises(ValueError):
        dcl_loss(z1, z2, 0.0)
    with pytest.raises(ValueError):
        dcl_loss(z1, z2, 0.1, weighting="other")
    with pytest.raises(ValueError):
        vicreg_loss(z1, z2[:, :3])
    with pytest.raises(ValueError):
        unigrad_loss(z1, z2[:, :3])
