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
        for patch in range(4):
            if mask[b, patch]:
                t = target[b, patch]
                rows_tgt.append((t - t.mean()) / math.sqrt(float(t.var()) + 1e-6))
                rows_pred.append(pred[b, patch])
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


def _mochi_reference_loss(q, k, queue, tau, n_hard, draw) -> float:
    """MoCHi's loss from the paper's equations (Kalantidis et al. 2020, Sec. 4), one query at a time.

    Q~^N: the N queue negatives with the highest q . n, hardest first. Synthetic negatives
    h_k = h~_k / ||h~_k||, h~_k = a_k n_i + (1 - a_k) n_j with n_i, n_j in Q~^N (i != j), and
    h'_k = normalise(b_k q + (1 - b_k) n_j), b_k < 0.5. The loss is MoCo's InfoNCE with the
    synthetic negatives added to the queue's: -log e^{q.k/t} / (e^{q.k/t} + sum_{n in Q + H + H'} e^{q.n/t}).
    """
    total = 0.0
    for b in range(q.shape[0]):
        qb, kb = q[b] / q[b].norm(), k[b] / k[b].norm()
        ranked = sorted(range(queue.shape[0]), key=lambda j: -float(qb @ queue[j]))[:n_hard]
        negatives = [queue[j] for j in range(queue.shape[0])]
        for s in range(draw.alpha.shape[1]):
            i, j, a = ranked[int(draw.pair_i[b, s])], ranked[int(draw.pair_j[b, s])], float(draw.alpha[b, s])
            assert i != j, "MoCHi mixes two distinct negatives"
            h = a * queue[i] + (1 - a) * queue[j]
            negatives.append(h / h.norm())
        for s in range(draw.beta.shape[1]):
            j, beta = ranked[int(draw.query_j[b, s])], float(draw.beta[b, s])
            assert 0 <= beta < 0.5
            h = beta * qb + (1 - beta) * queue[j]
            negatives.append(h / h.norm())
        pos = math.exp(float(qb @ kb) / tau)
        total += -math.log(pos / (pos + sum(math.exp(float(qb @ n) / tau) for n in negatives)))
    return total / q.shape[0]


def test_mochi_loss_matches_the_papers_equations() -> None:
    g = torch.Generator().manual_seed(8)
    q, k = (torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in range(2))
    queue = F.normalize(torch.randn(20, 6, generator=g, dtype=torch.float64), dim=1)
    draw = draw_mochi(4, 5, num_mix=3, num_query_mix=2, generator=g)
    extra = mochi_negatives(q, queue, 5, draw)
    assert extra.shape == (4, 5, 6) and not extra.requires_grad
    _close(moco_loss(q, k, queue, 0.2, extra), _mochi_reference_loss(q, k, queue, 0.2, 5, draw))


def test_mochi_pairs_are_two_distinct_negatives_uniform_over_ordered_pairs() -> None:
    g = torch.Generator().manual_seed(0)
    two = draw_mochi(64, 2, num_mix=64, num_query_mix=0, generator=g)  # hard set of 2: the pair is both
    assert bool((two.pair_i != two.pair_j).all())
    five = draw_mochi(256, 5, num_mix=64, num_query_mix=8, generator=g)
    assert bool((five.pair_i != five.pair_j).all())
    counts = torch.bincount((five.pair_i * 5 + five.pair_j).flatten(), minlength=25).reshape(5, 5)
    assert torch.all(counts.diagonal() == 0)
    off = counts[~torch.eye(5, dtype=torch.bool)].double()
    expected = 256 * 64 / 20  # 819 per ordered pair; a 5-sigma band
    assert float(off.min()) > expected - 5 * expected ** 0.5 and float(off.max()) < expected + 5 * expected ** 0.5
    with pytest.raises(ValueError, match="distinct hard negatives"):
        draw_mochi(4, 1, num_mix=2, num_query_mix=0)


def _planted_queue(seed: int = 0, b: int = 4, d: int = 32, n_planted: int = 8, n_far: int = 200):
    """Per query, ``n_planted`` queue entries close to it (cos ~0.9) among ``n_far`` random ones (cos ~0)."""
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    planted = F.normalize(q[:, None, :] + 0.1 * torch.randn(b, n_planted, d, generator=g, dtype=torch.float64), dim=-1)
    far = F.normalize(torch.randn(n_far, d, generator=g, dtype=torch.float64), dim=1)
    queue = torch.cat([planted.reshape(-1, d), far])
    return g, q, queue, planted


def _residual(x: torch.Tensor, basis: torch.Tensor) -> float:
    """Distance of ``x`` from the span of the rows of ``basis``."""
    coef = torch.linalg.lstsq(basis.T, x[:, None]).solution
    return float((basis.T @ coef - x[:, None]).norm())


def test_mochi_mixes_only_the_hardest_negatives() -> None:
    """With 8 queue entries planted close to each query, every synthetic negative of that query is a mix of
    its planted entries only (plus the query itself for h'): MoCHi mixes the hardest, not any, negatives."""
    g, q, queue, planted = _planted_queue()
    draw = draw_mochi(4, 8, num_mix=16, num_query_mix=8, generator=g)
    out = mochi_negatives(q, queue, 8, draw)
    for b in range(4):
        for s in range(16):
            assert _residual(out[b, s], planted[b]) < 1e-8, (b, s)
        with_query = torch.cat([planted[b], q[b : b + 1]])
        for s in range(16, 24):
            assert _residual(out[b, s], with_query) < 1e-8, (b, s)
            assert _residual(out[b, s], planted[b]) > 1e-3  # and the query really is in the mix


def test_mixing_the_hardest_negatives_costs_more_than_mixing_random_ones() -> None:
    """The same draw, mixed from each query's top-N queue entries or from N random queue entries:
    the hardest mixes are closer to the query, so the loss is higher."""
    g, q, queue, _ = _planted_queue(seed=1)
    k = F.normalize(q + 0.5 * torch.randn(q.shape, generator=g, dtype=torch.float64), dim=1)
    draw = draw_mochi(4, 8, num_mix=64, num_query_mix=0, generator=g)
    hardest = moco_loss(q, k, queue, 0.2, mochi_negatives(q, queue, 8, draw))
    random_set = queue[32 + torch.randperm(200, generator=g)[:8]]  # 8 of the far entries: top-8 of them is all of them
    random_mix = moco_loss(q, k, queue, 0.2, mochi_negatives(q, random_set, 8, draw))
    plain = moco_loss(q, k, queue, 0.2)
    assert float(hardest) > float(random_mix) + 1.0, (float(hardest), float(random_mix))
    assert float(random_mix) - float(plain) < 0.5 * (float(hardest) - float(plain))


def _mixed_barlow_reference(z1, z2, zm, perm, alpha, standardise):
    """Mixed Barlow Twins' regulariser as Bandara et al.'s main.py computes it (github.com/wgcban/mix-bt):
    standardise each projection over the batch, C(x, y) = x^T y / B, and compare the mixed view's
    correlations with their linear-mixing prediction, for both views:

        ||C(m, 1) - (a C(1, 1) + (1 - a) C(2[perm], 1))||^2 + ||C(m, 2) - (a C(1, 2) + (1 - a) C(2[perm], 2))||^2

    (main.py then scales it by mixup_loss_scale * lambda; our method does that outside the loss).
    ``z2[perm]`` is standardised after the permutation, as main.py indexes the standardised matrix:
    the same rows either way."""
    b = z1.shape[0]
    n1, n2, nm = standardise(z1), standardise(z2), standardise(zm)
    n2p = n2[perm]

    def c(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.T @ y / b

    cc_m_1, cc_m_1_gt = c(nm, n1), alpha * c(n1, n1) + (1 - alpha) * c(n2p, n1)
    cc_m_2, cc_m_2_gt = c(nm, n2), alpha * c(n1, n2) + (1 - alpha) * c(n2p, n2)
    return (cc_m_1 - cc_m_1_gt).pow(2).sum() + (cc_m_2 - cc_m_2_gt).pow(2).sum()


def test_mixed_barlow_regulariser_matches_the_authors_code() -> None:
    """Bandara's main.py standardises with ``(z - z.mean(0)) / z.std(0)`` (unbiased std, no eps); sslpipe
    standardises as Barlow Twins' own code does (BatchNorm without affine: biased variance + 1e-5), the same
    as its Barlow Twins term. With that one convention swapped in, the regulariser equals main.py's; with
    main.py's own, it differs only by the (B-1)/B scale of every correlation (squared), ~1 % at B=256."""
    g = torch.Generator().manual_seed(9)
    b, d = 32, 6
    z1, z2, zm = (torch.randn(b, d, generator=g, dtype=torch.float64) for _ in range(3))
    perm = torch.randperm(b, generator=g)
    alpha = 0.3
    ours = mixed_barlow_regulariser(z1, z2, zm, perm, alpha)

    def batchnorm(z: torch.Tensor) -> torch.Tensor:
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)

    _close(ours, _mixed_barlow_reference(z1, z2, zm, perm, alpha, batchnorm))
    authors = _mixed_barlow_reference(z1, z2, zm, perm, alpha, lambda z: (z - z.mean(0)) / z.std(0))
    assert abs(float(ours) * ((b - 1) / b) ** 2 - float(authors)) < 1e-4 * float(authors)
    # the permutation matters: mixing with the un-permuted second view is a different regulariser
    assert abs(float(ours) - float(mixed_barlow_regulariser(z1, z2, zm, torch.arange(b), alpha))) > 1e-3


def _isogclr_paper_reference(z1, z2, tau, u_prev, gamma, rho):
    """iSogCLR (Qiu et al. 2023, Algorithm 1 and Eq. 6-9), written anchor by anchor.

    For anchor e_i (view v of sample i) with positive e'_i (the other view) and negatives S_i (the other
    2B - 2 embeddings of the batch), h_i(z) = e_i.z - e_i.e'_i and g_i = mean_{z in S_i} exp(h_i(z) / tau_i).
    The moving average u_i <- (1 - gamma) u_i + gamma g_i (u_i = g_i on a first visit) stands in for the
    expectation: the gradient in w is mean_z exp(h_i(z)/tau_i) / u_i * grad h_i(z), the gradient in
    tau_i is log u_i + rho - mean_z exp(h_i(z)/tau_i) / u_i * h_i(z) / tau_i. Returns the surrogate (whose
    gradient is the former, averaged over the 2B anchors), the new u (per sample and view; NaN in
    ``u_prev`` = never seen) and the tau-gradient per sample (mean of its two anchors)."""
    views = [z1 / z1.norm(dim=1, keepdim=True), z2 / z2.norm(dim=1, keepdim=True)]
    b = z1.shape[0]
    surrogate = 0.0
    u_new = torch.zeros(b, 2, dtype=z1.dtype)
    tau_grad = torch.zeros(b, dtype=z1.dtype)
    for v in (0, 1):
        for i in range(b):
            anchor, positive = views[v][i], views[1 - v][i]
            negatives = [views[w][j] for w in (0, 1) for j in range(b) if j != i]
            h = [anchor @ z - anchor @ positive for z in negatives]
            e = [math.exp(float(hz.detach()) / float(tau[i])) for hz in h]
            g_i = sum(e) / len(e)
            u_i = g_i if math.isnan(float(u_prev[i, v])) else (1 - gamma) * float(u_prev[i, v]) + gamma * g_i
            u_new[i, v] = u_i
            weights = [ez / u_i for ez in e]  # constants: the surrogate's gradient is the estimator's
            surrogate = surrogate + sum(wz * hz for wz, hz in zip(weights, h)) / len(h) / (2 * b)
            tau_grad[i] += 0.5 * (math.log(u_i) + rho - sum(wz * float(hz.detach()) / float(tau[i])
                                                             for wz, hz in zip(weights, h)) / len(h))
    return surrogate, u_new, tau_grad


@pytest.mark.parametrize("first_visit", [True, False])
def test_isogclr_matches_the_papers_algorithm(first_visit: bool) -> None:
    b = 5
    z1, z2 = _pair(b=b, d=6, seed=10)
    tau = torch.tensor([0.1, 0.3, 0.5, 0.2, 0.9], dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    u_prev = torch.full((b, 2), float("nan"), dtype=torch.float64) if first_visit else \
        torch.rand(b, 2, generator=g, dtype=torch.float64) + 0.5
    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    r1, r2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    out = isogclr_loss(a1, a2, tau, u_prev.log(), gamma=0.8, rho=0.7)  # our state is log u
    ref_loss, ref_u, ref_grad = _isogclr_paper_reference(r1, r2, tau, u_prev, 0.8, 0.7)
    _close(out.loss, ref_loss)
    assert torch.allclose(out.log_u.exp(), ref_u, rtol=TOL)
    assert torch.allclose(out.tau_grad, ref_grad, atol=TOL)
    out.loss.backward()
    ref_loss.backward()
    assert torch.allclose(a1.grad, r1.grad, atol=TOL) and torch.allclose(a2.grad, r2.grad, atol=TOL)


def test_isogclr_first_visit_matches_the_authors_code() -> None:
    """The authors' unimodal code (zhqiu/contrastive-learning-iSogCLR ``SogCLR_DRO_Loss``; LibAUC's
    ``GCLoss_v1(enable_isogclr=True)`` alike) in matrix form: per anchor row, s = mean over negatives of
    exp(sim / tau), weights exp(sim / tau) / s, loss = sum_views(mean_neg(weights * sim) - pos), and
    d/dtau = log s + rho - mean_neg(weights * sim / tau). Their s leaves out the positive's shift e_i.e'_i
    and is one per sample (the mean of the two views'), so the two agree where s is the batch mean (a
    first visit; later visits follow the paper, see the test above). Their loss sums the two views where
    ours averages them: a factor 2 on the value and the gradient."""
    b = 6
    z1, z2 = _pair(b=b, d=5, seed=14)
    tau = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=torch.float64)
    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    out = isogclr_loss(a1, a2, tau, torch.full((b, 2), float("nan"), dtype=torch.float64), gamma=0.9, rho=0.3)
    out.loss.backward()

    r1, r2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    feats = torch.cat([F.normalize(r1, dim=1), F.normalize(r2, dim=1)])  # [2B, D]: view 1 rows, then view 2
    sim = feats @ feats.T
    pos = torch.cat([torch.diagonal(sim, offset=b), torch.diagonal(sim, offset=-b)])[:, None]
    neg_mask = (1.0 - torch.eye(b, dtype=torch.float64)).repeat(2, 2)  # neither self nor positive
    n_neg = 2 * b - 2
    taus = tau.repeat(2)[:, None]
    sim_t = (sim / taus).detach()
    exp_t = torch.exp(sim_t) * neg_mask
    s_ = exp_t.sum(1, keepdim=True) / n_neg
    weights = exp_t / s_
    loss = ((weights * sim).sum(1, keepdim=True) / n_neg - pos).mean() * 2  # mean over B of (view-1 + view-2)
    tau_grad = torch.log(s_) + 0.3 - (weights * sim_t).sum(1, keepdim=True) / n_neg
    loss.backward()
    _close(2 * out.loss, loss)
    assert torch.allclose(out.tau_grad, 0.5 * (tau_grad[:b, 0] + tau_grad[b:, 0]), atol=TOL)
    assert torch.allclose(2 * a1.grad, r1.grad, atol=TOL) and torch.allclose(2 * a2.grad, r2.grad, atol=TOL)


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
