"""Every registered method: constructor contract, one training step, bf16
autocast without NaN, and the method-specific state (EMA, queue, temperatures)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

from ssl_models.backbones import build_backbone
from ssl_models.ema import cosine_momentum, ema_update, make_teacher
from ssl_models.methods import METHODS, build_method
from ssl_models.methods._vit_common import random_masking
from ssl_models.methods.siameseim import crop, relative_coords, sample_boxes
from ssl_models.vit import build_vit, num_params

EXPECTED = {
    "simclr", "dcl", "dclw", "moco_v2", "mochi", "byol", "barlow_twins", "mixed_barlow_twins",
    "vicreg", "isogclr", "mae", "siameseim",
}
VIT_KW = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=1, num_heads=2, decoder_dim=32, decoder_depth=1)
SMALL_HEAD = dict(proj_hidden_dim=32, proj_dim=16)


def small_kwargs(name: str) -> dict:
    """Tiny widths so a step takes milliseconds; only kwargs the signature accepts."""
    kw: dict = {**VIT_KW} if name in ("mae", "siameseim") else dict(SMALL_HEAD)
    extra = {
        "moco_v2": dict(queue_size=64), "mochi": dict(queue_size=64, mochi_n_hard=16, mochi_num_mix=8, mochi_num_query_mix=4),
        "byol": dict(pred_hidden_dim=32), "isogclr": dict(num_samples=50),
    }
    kw.update(extra.get(name, {}))
    return kw


def make(name: str) -> nn.Module:
    backbone, dim = build_backbone("convnet_small", in_channels=1, width=8)
    return build_method(name, backbone, dim, **small_kwargs(name))


def step_inputs(method: nn.Module, batch: int = 8, seed: int = 0) -> tuple[list[torch.Tensor], dict]:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(batch, 1, 28, 28, generator=g) for _ in range(method.num_views)]
    extra = {"index": torch.arange(batch)} if "index" in inspect.signature(method.forward).parameters else {}
    return views, extra


def test_registry_has_every_method() -> None:
    assert set(METHODS) == EXPECTED
    with pytest.raises(ValueError, match="unknown method"):
        build_method("nope", nn.Identity(), 4)


@pytest.mark.parametrize(("kwargs", "message"), [({"loss": "mse"}, "loss must be one of"),
                                                  ({"pixel_weight": -1.0}, "must be >= 0")])
def test_siameseim_rejects_bad_objective_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_method("siameseim", nn.Identity(), 4, img_size=16, in_chans=1, depth=1, **kwargs)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_constructor_signature_contract(name: str) -> None:
    params = list(inspect.signature(METHODS[name].__init__).parameters.values())
    assert [p.name for p in params[1:3]] == ["backbone", "feature_dim"]
    for p in params[3:]:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{name}.{p.name} must be keyword-only"
        assert p.default is not inspect.Parameter.empty, f"{name}.{p.name} needs a default"
    names = {p.name for p in params}
    if name not in ("mae", "siameseim"):
        assert {"proj_hidden_dim", "proj_dim"} <= names


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_one_step_trains_and_features_are_pooled(name: str) -> None:
    torch.manual_seed(0)
    method = make(name)
    views, extra = step_inputs(method)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05)
    before = [p.detach().clone() for p in method.backbone.parameters()]
    loss, logs = method(views, **extra)
    assert loss.ndim == 0 and math.isfinite(float(loss.detach())) and logs["loss"] == pytest.approx(float(loss.detach()))
    loss.backward()
    opt.step()
    method.on_step_end(0, 10)
    changed = any(not torch.equal(b, p) for b, p in zip(before, method.backbone.parameters()))
    assert changed, "the backbone received no gradient"
    feats = method.backbone(views[0])
    assert feats.shape == (8, method.feature_dim)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bf16_autocast_has_no_nan(name: str) -> None:
    torch.manual_seed(1)
    method = make(name)
    views, extra = step_inputs(method, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = method(views, **extra)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    for n, p in method.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), f"non-finite gradient in {n}"


def test_ema_update_and_cosine_schedule() -> None:
    student = nn.Linear(3, 2)
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        student.weight.add_(1.0)
    old = teacher.weight.clone()
    ema_update(teacher, student, 0.9)
    assert torch.allclose(teacher.weight, 0.9 * old + 0.1 * student.weight)
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)


def test_moco_queue_receives_the_keys_in_order() -> None:
    method = make("moco_v2")
    views, _ = step_inputs(method)
    old = method.queue.clone()
    method(views)
    assert torch.equal(method.queue, old), "the queue must only change in on_step_end"
    expected_keys = [k.clone() for k in method._pending]
    method.on_step_end(0, 10)
    assert int(method.queue_ptr) == 16
    assert torch.allclose(method.queue[:8], expected_keys[0]) and torch.allclose(method.queue[8:16], expected_keys[1])
    assert torch.equal(method.queue[16:], old[16:])


def test_mochi_mixes_each_querys_hardest_queue_entries_from_its_start_step() -> None:
    """Plant 8 queue entries close to each of 8 queries: every synthetic negative MoCHi adds for a query
    lies in the span of that query's planted entries (and the query, for the query mixes), i.e. the method
    mixes its hardest negatives; before ``mochi_start_step`` it adds none. (Queries are random unit vectors:
    an untrained projector maps every image to nearly the same direction.)"""
    torch.manual_seed(2)
    backbone, dim = build_backbone("convnet_small", in_channels=1, width=8)
    method = build_method("mochi", backbone, dim, **SMALL_HEAD, queue_size=256, mochi_n_hard=8, mochi_num_mix=12,
                          mochi_num_query_mix=4, mochi_start_step=3)
    q = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    planted = torch.nn.functional.normalize(q[:, None, :] + 0.05 * torch.randn(8, 8, 16), dim=-1)
    method.queue[:64] = planted.reshape(64, -1)
    assert method.synthetic_negatives(q) is None  # step 0 < mochi_start_step
    method._step = 3
    extra = method.synthetic_negatives(q)
    assert extra.shape == (8, 16, q.shape[1])

    def residual(x: torch.Tensor, basis: torch.Tensor) -> float:
        coef = torch.linalg.lstsq(basis.T.double(), x[:, None].double()).solution
        return float((basis.T.double() @ coef - x[:, None].double()).norm())

    for b in range(8):
        assert all(residual(extra[b, s], planted[b]) < 1e-4 for s in range(12)), b
        assert all(residual(extra[b, s], torch.cat([planted[b], q[b : b + 1]])) < 1e-4 for s in range(12, 16)), b


def test_isogclr_updates_only_the_seen_samples() -> None:
    method = make("isogclr")
    views, _ = step_inputs(method)
    index = torch.tensor([3, 7, 11, 20, 21, 30, 40, 49])
    tau0 = method.tau.clone()
    for _ in range(3):
        method(views, index=index)
    seen = torch.zeros(50, dtype=torch.bool)
    seen[index] = True
    assert not torch.isnan(method.log_u[seen]).any() and torch.isnan(method.log_u[~seen]).all()
    assert (method.tau[seen] != tau0[seen]).all() and torch.equal(method.tau[~seen], tau0[~seen])
    assert ((method.tau >= 0.05) & (method.tau <= 1.0)).all()
    loss, logs = method(views)  # without ids: shared temperature
    assert torch.isfinite(loss) and float(method.shared_tau) != pytest.approx(0.3)


def test_isogclr_rho_moves_temperatures_in_opposite_directions() -> None:
    """A KL radius above the current KL(p||uniform) lowers tau; a tiny one raises it."""
    taus = {}
    for rho in (0.0, 5.0):
        torch.manual_seed(3)
        backbone, dim = build_backbone("convnet_small", in_channels=1, width=8)
        m = build_method("isogclr", backbone, dim, **SMALL_HEAD, num_samples=8, rho=rho, tau_lr=0.05)
        views, _ = step_inputs(m)
        for _ in range(5):
            m(views, index=torch.arange(8))
        taus[rho] = float(m.tau.mean())
    assert taus[0.0] > 0.3 > taus[5.0]


def test_vit_sizes_and_pooling() -> None:
    tiny, small = build_vit("vit_tiny", img_size=32, patch_size=4), build_vit("vit_small", img_size=32, patch_size=4)
    assert 5.0e6 < num_params(tiny) < 6.0e6 and 21e6 < num_params(small) < 22.5e6  # DeiT-Ti 5.7M, DeiT-S 22M
    vit = build_vit("vit_tiny", img_size=28, patch_size=4, in_chans=1, depth=1)
    x = torch.randn(2, 1, 28, 28)
    assert vit(x).shape == (2, 192) and vit.num_patches == 49
    keep = torch.tensor([[0, 5, 9], [1, 2, 48]])
    assert vit.forward_tokens(x, keep).shape == (2, 4, 192)


def test_random_masking_hides_the_requested_fraction() -> None:
    keep, mask = random_masking(4, 64, 0.75, torch.device("cpu"))
    assert keep.shape == (4, 16) and mask.sum(1).eq(48).all()
    assert not mask.gather(1, keep).any() and (keep.diff(dim=1) > 0).all()


def test_mae_backbone_is_used_when_it_is_a_vit() -> None:
    vit = build_vit("vit_tiny", img_size=28, patch_size=4, in_chans=1, depth=1)
    assert build_method("mae", vit, 192).backbone is vit
    own = build_method("mae", nn.Identity(), 999, **VIT_KW)
    assert own.feature_dim == 32


def test_siameseim_relative_coordinates() -> None:
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    rows, cols, log_scale = relative_coords(full, full, 4)
    assert torch.allclose(rows[0], torch.arange(16.0) // 4) and torch.allclose(cols[0], torch.arange(16.0) % 4)
    assert torch.allclose(log_scale, torch.zeros(1, 2))
    flipped = torch.tensor([[0.0, 0.0, -1.0, 1.0]])
    _, cols_f, _ = relative_coords(full, flipped, 4)
    assert torch.allclose(cols_f[0], 3 - torch.arange(16.0) % 4)
    # crop 2 = top-left quarter of the image: its patches land in crop 1's rows/cols 0..2 at half size
    quarter = torch.tensor([[-0.5, -0.5, 0.5, 0.5]])
    rows_q, cols_q, log_q = relative_coords(full, quarter, 4)
    assert torch.allclose(cols_q[0, :4], torch.tensor([-0.25, 0.25, 0.75, 1.25]))
    assert torch.allclose(log_q, torch.full((1, 2), math.log(0.5)))
    # the crop function agrees with the coordinates: an identity box leaves the image unchanged
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(crop(x, full.expand(2, -1), 8), x, atol=1e-5)
    boxes = sample_boxes(100, (0.3, 1.0))
    assert (boxes[:, 2].abs() <= 1).all() and ((boxes[:, 0].abs() + boxes[:, 2].abs()) <= 1 + 1e-6).all()


def test_zero_init_residual_makes_every_resnet_block_start_as_the_identity() -> None:
    import torchvision

    plain, _ = build_backbone("resnet18", in_channels=3, cifar_stem=True)
    zeroed, _ = build_backbone("resnet18", in_channels=3, cifar_stem=True, zero_init_residual=True)
    last_bns = [m.bn2 for m in zeroed.modules() if isinstance(m, torchvision.models.resnet.BasicBlock)]
    assert len(last_bns) == 8 and all(torch.all(bn.weight == 0) for bn in last_bns)
    assert any(torch.any(m.bn2.weight != 0) for m in plain.modules() if isinstance(m, torchvision.models.resnet.BasicBlock))


def test_stem_relu_false_feeds_the_signed_stem_batchnorm_output_to_the_first_block() -> None:
    """LightlySSL's benchmark backbone (``nn.Sequential`` over ``ResNetGenerator``'s children) has no stem
    ReLU; ``stem_relu=False`` builds that, and only the stem changes (every block keeps its own ReLUs)."""
    seen: dict[str, torch.Tensor] = {}
    x = torch.randn(4, 3, 16, 16)
    for relu in (True, False):
        torch.manual_seed(0)
        net, _ = build_backbone("resnet18", in_channels=3, cifar_stem=True, stem_relu=relu)
        net.layer1.register_forward_pre_hook(lambda _m, args, relu=relu: seen.__setitem__(relu, args[0]))
        net(x)
        assert sum(isinstance(m, torch.nn.ReLU) for m in net.modules()) == (9 if relu else 8)
    assert (seen[True] >= 0).all() and (seen[False] < 0).any()
    assert torch.allclose(seen[True], seen[False].clamp_min(0))  # same weights: the ReLU is the only difference


def test_torch_default_conv_init_has_the_smaller_norm_that_batchnorm_turns_into_a_larger_step() -> None:
    """Behind BatchNorm a conv's scale does not change the output, only how far one SGD step turns it."""
    torch.manual_seed(0)
    kaiming, _ = build_backbone("resnet18", in_channels=3, cifar_stem=True)
    default, _ = build_backbone("resnet18", in_channels=3, cifar_stem=True, conv_init="torch_default")
    k, d = kaiming.layer1[0].conv1.weight, default.layer1[0].conv1.weight  # 64 -> 64, 3x3: ratio 6
    assert 5.0 < float(k.norm() ** 2 / d.norm() ** 2) < 7.0

    # the same network at 1/6 of the conv's squared norm: same train-mode output, a ~6x larger turn per step
    torch.manual_seed(1)
    conv, bn = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8)
    x, target = torch.randn(16, 8, 6, 6), torch.randn(16, 8, 6, 6)

    def angle_of_one_step(scale: float) -> tuple[torch.Tensor, float]:
        w = (conv.weight.detach() * scale).requires_grad_()
        out = bn(torch.nn.functional.conv2d(x, w, padding=1))
        ((out - target) ** 2).mean().backward()
        new = w.detach() - 0.1 * w.grad
        return out.detach(), float(torch.arccos(torch.nn.functional.cosine_similarity(new.flatten(), w.detach().flatten(), 0)))

    out_big, turn_big = angle_of_one_step(1.0)
    out_small, turn_small = angle_of_one_step(6 ** -0.5)
    assert torch.allclose(out_big, out_small, atol=1e-3, rtol=1e-3)  # up to BatchNorm's eps
    assert 5.0 < turn_small / turn_big < 7.0
    with pytest.raises(ValueError, match="conv_init"):
        build_backbone("resnet18", conv_init="xavier")


@pytest.mark.parametrize("name", ["simclr", "dcl", "dclw"])
def test_projector_output_batchnorm_centres_each_output_coordinate_over_the_batch(name: str) -> None:
    """``proj_output_bn`` (LightlySSL's and SimCLR v2's head) ends the projector in a BatchNorm:
    in training each output coordinate has batch mean 0 and variance 1 before the L2 normalisation."""
    backbone, dim = build_backbone("convnet_small", in_channels=1, width=8)
    plain = build_method(name, backbone, dim, **SMALL_HEAD)
    with_bn = build_method(name, backbone, dim, **SMALL_HEAD, proj_output_bn=True)
    assert not isinstance(plain.projector[-1], nn.BatchNorm1d)
    assert isinstance(with_bn.projector[-1], nn.BatchNorm1d)
    with_bn.train()
    z = with_bn.projector(torch.randn(64, dim) + 3.0)
    torch.testing.assert_close(z.mean(0), torch.zeros(z.shape[1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var(0, unbiased=False), torch.ones(z.shape[1]), atol=1e-3, rtol=0)
    loss, _ = with_bn([torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28)])
    loss.backward()
    assert with_bn.projector[-1].weight.grad is not None
