"""Each method, pretrained briefly on real MNIST digits, beats its own random
initialisation on kNN and does not collapse.

Small on purpose (2 shared CPU cores): digits resized to 16 px, ``convnet_small``
(width 16) for the joint-embedding methods, a 2-block ViT for MAE/SiameseIM,
batch 128, a fixed budget of optimizer steps per method.
The bar is relative (trained > random-init kNN of the *same* network), which is
what "the method learned something" means, and outside the noise: the gain on
the 1,000 queries must exceed 3 standard errors of a paired difference (each
query scored correct/incorrect before and after; SE = std of the per-query
difference / sqrt(1000)), or the method is listed in ``BELOW_3_SE`` with why.
A collapsed encoder would score near chance, and the per-dimension feature std
must stay above a floor.

``python -m tests.ssl_models.test_mnist_pretrain NAME [KEY=VALUE ...]`` runs one
method in this set-up with extra constructor arguments (e.g. ``siameseim
loss=cosine pixel_weight=0``; ``steps=`` and ``lr=`` change the run) and prints
kNN before and after: the command behind the SiameseIM ablation in
docs/BENCHMARKS.md.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from pipelines.evaluation.knn import DINO, weighted_knn_predict
from ssl_models.augment import ViewRecipe, augment_batch, normalize_batch
from ssl_models.backbones import build_backbone
from ssl_models.methods import build_method

RECIPE = ViewRecipe(size=16, crop_scale=(0.3, 1.0), flip_prob=0.0, jitter_strength=0.5, grayscale_prob=0.0)
#: SiameseIM crops views itself (see its docstring), so its views carry colour only
COLOUR_ONLY = ViewRecipe(size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, jitter_strength=0.5,
                         grayscale_prob=0.0)
N_TRAIN, N_BANK, N_QUERY = 4000, 3000, 1000
VIT = dict(img_size=16, patch_size=4, in_chans=1, embed_dim=64, depth=2, num_heads=4, decoder_dim=64, decoder_depth=1,
           decoder_heads=4)
HEAD = dict(proj_hidden_dim=256, proj_dim=64)

#: (method kwargs, optimizer steps, learning rate): a step count, not seconds, so the result does not
#: depend on how busy the machine is
CONFIGS: dict[str, tuple[dict, float, float]] = {
    "simclr": (dict(HEAD, temperature=0.2), 120, 2e-3),
    "dcl": (dict(HEAD, temperature=0.2), 120, 2e-3),
    "dclw": (dict(HEAD, temperature=0.2), 120, 2e-3),
    # teacher/queue methods: an EMA momentum of 0.9 lets the key encoder track the online one so closely
    # that kNN falls below random init in this budget (0.76-0.79); 0.99 gives 0.84-0.90 (measured)
    "moco_v2": (dict(HEAD, temperature=0.2, queue_size=2048, momentum=0.99), 160, 1e-3),
    "mochi": (dict(HEAD, temperature=0.2, queue_size=2048, momentum=0.99, mochi_n_hard=256, mochi_num_mix=256,
                   mochi_num_query_mix=64), 160, 2e-3),
    # BYOL learns slowest here: 160 steps gave +3.0 pts = 2.3 paired SE (lr 4e-3: -0.1; base_momentum 0.9: 2.3 SE),
    # 320 steps +6.6 pts = 5.2 SE (measured with this module's command line, 2026-12-01)
    "byol": (dict(HEAD, pred_hidden_dim=256, base_momentum=0.99), 320, 2e-3),
    "barlow_twins": (dict(proj_hidden_dim=256, proj_dim=256, lambda_offdiag=0.02), 120, 2e-3),
    "mixed_barlow_twins": (dict(proj_hidden_dim=256, proj_dim=256, lambda_offdiag=0.02), 120, 2e-3),
    "vicreg": (dict(proj_hidden_dim=256, proj_dim=256), 120, 2e-3),
    "isogclr": (dict(HEAD, temperature=0.3, num_samples=N_TRAIN, rho=1.0, tau_lr=0.01), 120, 2e-3),
    "mae": (dict(VIT, mask_ratio=0.75), 500, 2e-3),
    # MIM needs MAE's budget here: SiameseIM (UniGrad + cross-view pixels) 0.605 -> 0.73 in 500 steps,
    # 0.63 in 300; with the feature target alone it stays below random init (0.58 at 500; measured)
    "siameseim": (dict(VIT, mask_ratio=0.5, base_momentum=0.99), 500, 2e-3),
}
STD_FLOOR = 1e-3


def _features(backbone: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    backbone.eval()
    with torch.no_grad():
        out = torch.cat([backbone(normalize_batch(images[i : i + 500], RECIPE)) for i in range(0, len(images), 500)])
    backbone.train()
    return out.numpy()


def _knn(backbone: torch.nn.Module, images: torch.Tensor, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-query correctness (bool [N_QUERY]) of the DINO-protocol kNN, and the features."""
    feats = _features(backbone, images)
    bank, query = feats[:N_BANK], feats[N_TRAIN : N_TRAIN + N_QUERY]
    pred = weighted_knn_predict(bank, labels[:N_BANK], query, DINO.k, DINO.temperature, num_classes=10)
    return pred == labels[N_TRAIN : N_TRAIN + N_QUERY], feats


def pretrain(name: str, images: torch.Tensor, labels: np.ndarray, steps: int, lr: float, kwargs: dict,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Returns (per-query correctness at random init, after training, smallest per-dimension feature std
    after training, steps)."""
    torch.manual_seed(seed)
    backbone, dim = build_backbone("convnet_small", in_channels=1, width=16)
    method = build_method(name, backbone, dim, **kwargs)
    before, _ = _knn(method.backbone, images, labels)
    recipe = COLOUR_ONLY if name == "siameseim" else RECIPE
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    batch, step = 128, 0
    max_steps = 10_000  # schedules (EMA momentum) see a long horizon
    while step < steps:
        idx = torch.randint(0, N_TRAIN, (batch,), generator=gen)
        x = images[idx]
        views = [augment_batch(x, recipe, gen) for _ in range(method.num_views)]
        extra = {"index": idx} if name == "isogclr" else {}
        loss, _ = method(views, **extra)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.on_step_end(step, max_steps)
        step += 1
    after, feats = _knn(method.backbone, images, labels)
    return before, after, float(feats.std(0).min()), step


def paired_gain(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    """(mean gain, its standard error) of kNN accuracy on the same queries before and after training."""
    d = after.astype(np.float64) - before.astype(np.float64)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


@pytest.fixture(scope="module")
def digits(mnist_digits) -> tuple[torch.Tensor, np.ndarray]:
    images, labels = mnist_digits
    return torch.from_numpy(images[:, None].copy()), labels


#: methods whose gain in this budget stays inside 3 standard errors, and why (the test then asks for a
#: positive gain only); empty when every method clears the bar
BELOW_3_SE: dict[str, str] = {}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pretraining_beats_random_init(digits: tuple[torch.Tensor, np.ndarray], name: str) -> None:
    torch.set_num_threads(1)
    kwargs, budget, lr = CONFIGS[name]
    before, after, min_std, steps = pretrain(name, *digits, budget, lr, kwargs)
    gain, se = paired_gain(before, after)
    print(f"{name}: kNN {before.mean():.3f} -> {after.mean():.3f} in {steps} steps, gain {100 * gain:+.1f} pts "
          f"= {gain / se:.1f} SE (paired SE {100 * se:.2f} pts), min feature std {min_std:.4f}")
    if name in BELOW_3_SE:
        assert gain > 0, f"{name}: kNN {after.mean():.3f} does not beat random init {before.mean():.3f}"
    else:
        assert gain > 3 * se, (f"{name}: kNN gain {100 * gain:+.1f} pts is inside 3 standard errors "
                               f"({100 * 3 * se:.1f} pts) of the paired difference")
    assert min_std > STD_FLOOR, f"{name}: a feature dimension collapsed (std {min_std:.2e})"


def main(argv: list[str]) -> int:
    """``NAME [KEY=VALUE ...]``: one method in this set-up, extra constructor arguments parsed as Python
    literals; prints kNN before/after and the paired gain."""
    import ast

    from pipelines.sources import load_mnist_digits

    name, extra = argv[0], dict(arg.split("=", 1) for arg in argv[1:])
    kwargs, budget, lr = CONFIGS[name]
    budget, lr = int(extra.pop("steps", budget)), float(extra.pop("lr", lr))  # the run's, not the method's
    kwargs = {**kwargs, **{k: ast.literal_eval(v) if v[:1] in "0123456789-.([{" or v in ("True", "False") else v
                           for k, v in extra.items()}}
    torch.set_num_threads(1)
    images, labels = load_mnist_digits()
    before, after, min_std, steps = pretrain(name, torch.from_numpy(images[:, None].copy()), labels, budget, lr, kwargs)
    gain, se = paired_gain(before, after)
    print(f"{name} {extra}: kNN {before.mean():.3f} -> {after.mean():.3f} in {steps} steps, "
          f"gain {100 * gain:+.1f} pts ({gain / se:.1f} SE), min feature std {min_std:.4f}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
