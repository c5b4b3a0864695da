"""Each method, pretrained briefly on real MNIST digits, beats its own random
initialisation on kNN and does not collapse.

Small on purpose (2 shared CPU cores): digits resized to 16 px, ``convnet_small``
(width 16) for the joint-embedding methods, a 2-block ViT for MAE/SiameseIM,
batch 128, a fixed budget of optimizer steps per method.
The bar is relative (trained > random-init kNN of the *same* network), which is
what "the method learned something" means; a collapsed encoder would score near
chance, and the per-dimension feature std must stay above a floor.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from pipelines.evaluation.knn import DINO, knn_accuracy
from ssl_models.augment import ViewRecipe, augment_batch, normalize_batch
from ssl_models.backbones import build_backbone
from ssl_models.methods import build_method

RECIPE = ViewRecipe(size=16, crop_scale=(0.3, 1.0), flip_prob=0.0, jitter_strength=0.5, grayscale_prob=0.0)
#: SiameseIM crops views itself (see its docstring), so its views carry colour only
COLOUR_ONLY = ViewRecipe(size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, jitter_strength=0.5, grayscale_prob=0.0)
N_TRAIN, N_BANK, N_QUERY = 4000, 3000, 1000
VIT = dict(img_size=16, patch_size=4, in_chans=1, embed_dim=64, depth=2, num_heads=4, decoder_dim=64, decoder_depth=1, decoder_heads=4)
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
    "mochi": (dict(HEAD, temperature=0.2, queue_size=2048, momentum=0.99, mochi_n_hard=256, mochi_num_mix=256, mochi_num_query_mix=64), 160, 2e-3),
    "byol": (dict(HEAD, pred_hidden_dim=256, base_momentum=0.99), 160, 2e-3),
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


def _knn(backbone: torch.nn.Module, images: torch.Tensor, labels: np.ndarray) -> tuple[float, np.ndarray]:
    feats = _features(backbone, images)
    bank, query = feats[:N_BANK], feats[N_TRAIN : N_TRAIN + N_QUERY]
    acc = knn_accuracy(bank, labels[:N_BANK], query, labels[N_TRAIN : N_TRAIN + N_QUERY], DINO)
    return acc, feats


def pretrain(name: str, images: torch.Tensor, steps: int, lr: float, kwargs: dict, seed: int = 0) -> tuple[float, float, float, int]:
    """Returns (random-init kNN, trained kNN, smallest per-dimension feature std after training)."""
    torch.manual_seed(seed)
    backbone, dim = build_backbone("convnet_small", in_channels=1, width=16)
    method = build_method(name, backbone, dim, **kwargs)
    labels = LABELS
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


@pytest.fixture(scope="module")
def digits(mnist_digits) -> torch.Tensor:
    global LABELS
    images, LABELS = mnist_digits
    return torch.from_numpy(images[:, None].copy())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pretraining_beats_random_init(digits: torch.Tensor, name: str) -> None:
    torch.set_num_threads(1)
    kwargs, budget, lr = CONFIGS[name]
    before, after, min_std, steps = pretrain(name, digits, budget, lr, kwargs)
    print(f"{name}: kNN {before:.3f} -> {after:.3f} in {steps} steps, min feature std {min_std:.4f}")
    assert after > before + 0.01, f"{name}: kNN {after:.3f} does not beat random init {before:.3f}"
    assert min_std > STD_FLOOR, f"{name}: a feature dimension collapsed (std {min_std:.2e})"
