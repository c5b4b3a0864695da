"""Dynamic pruning: rounds select the right amount, balance a long tail, and training keeps its step budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from curation.embed import RandomConvEmbedder
from pipelines.dynamic import select_subset
from ssl_models.augment import ViewRecipe


@pytest.fixture(scope="module")
def long_tailed(mnist_digits) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = mnist_digits
    counts = [int(round(300 * 0.02 ** (c / 9))) for c in range(10)]  # 300 ... 6
    chosen = np.concatenate([np.flatnonzero(labels == c)[:n] for c, n in enumerate(counts)])
    return torch.from_numpy(images[chosen][:, None]), torch.from_numpy(labels[chosen])


def _ToRGB() -> torch.nn.Module:  # noqa: N802 - reads like the module it returns
    """A weights-free backbone for grayscale digits (the same random conv net curation uses)."""
    return RandomConvEmbedder(1)


@pytest.mark.parametrize("policy", ["cluster_balance", "loss_based", "random"])
def test_a_round_keeps_the_asked_fraction_of_distinct_samples(long_tailed, policy: str) -> None:
    images, labels = long_tailed
    recipe = ViewRecipe(size=28, crop_scale=(0.5, 1.0), flip_prob=0.0, mean=(0.5,), std=(0.5,))
    r = select_subset(policy, _ToRGB(), images, labels, recipe, keep_fraction=0.4, subset_for_clustering=500,
                      levels=[], resampling_steps=2, seed=0)
    assert len(r.indices) == round(0.4 * len(images))
    assert len(torch.unique(r.indices)) == len(r.indices)
    assert r.info["round_seconds"] >= r.info["embed_seconds"] >= 0


def test_cluster_balance_flattens_a_long_tail(long_tailed) -> None:
    images, labels = long_tailed
    recipe = ViewRecipe(size=28, crop_scale=(0.5, 1.0), flip_prob=0.0, mean=(0.5,), std=(0.5,))
    # a random 30 % would keep the class entropy where it was; balancing raises it
    r = select_subset("cluster_balance", _ToRGB(), images, labels, recipe, keep_fraction=0.3,
                      subset_for_clustering=2000, levels=[20], resampling_steps=3, seed=0)
    assert r.info["class_entropy_after"] > r.info["class_entropy_before"] + 0.02, r.info
    assert r.info["cluster_entropy_after"] > r.info["cluster_entropy_before"]


@pytest.mark.parametrize("policy", ["cluster_balance", "loss_based"])
def test_pruned_training_reaches_the_same_step_count(ray_session, mnist_digits, tmp_path: Path, policy: str) -> None:
    from pipelines.config import load_config
    from pipelines.pretrain import pretrain

    images, labels = mnist_digits
    ds = ray_session.data.from_items([{"image": images[i][:, :, None], "label": int(labels[i])} for i in range(512)])
    cfg = load_config(None, [
        f"run_dir={tmp_path}", "train.num_workers=0", "train.epochs=3", "train.batch_size=64", "train.warmup_epochs=0",
        "backbone.width=8", "method.proj_hidden_dim=32", "method.proj_dim=16", "train.knn_monitor_every=0",
        f"dynamic.policy={policy}", "dynamic.warmup_epochs=1", "dynamic.every_epochs=2", "dynamic.keep_fraction=0.5",
    ])
    history = pretrain(cfg, ds, tmp_path).history
    assert history[-1]["step"] == 3 * (512 // 64)  # equal optimizer steps to the unpruned plan
    assert history[0]["active_samples"] == 512
    assert all(h["active_samples"] == 256 for h in history[1:])
    rounds = [h for h in history if "prune_round_seconds" in h]
    assert [h["epoch"] for h in rounds] == list(range(2, len(history) + 1, 2))  # after warm-up, every 2 epochs
    assert len(history) == 1 + 2 * 8 // 4 + 0  # 1 full epoch (8 steps) + 4 half epochs (4 steps each)

    # the report shows every round: a row each, and the rounds plot (pool size, balance, time split)
    from pipelines.report import pruning_rounds_plot, pruning_rounds_table

    assert pruning_rounds_table(history).count("<tr>") == 1 + len(rounds)
    assert pruning_rounds_plot(history).startswith("data:image/png;base64,")
    assert pruning_rounds_plot(history[:1]) is None  # no rounds, no plot
    if policy == "cluster_balance":
        assert all(0 < h["prune_cluster_entropy_after"] <= 1 for h in rounds)


ALL_METHODS = ["simclr", "dcl", "dclw", "moco_v2", "mochi", "byol", "barlow_twins", "mixed_barlow_twins",
               "vicreg", "isogclr", "mae", "siameseim"]


@pytest.fixture(scope="module")
def digits_256(ray_session, mnist_digits):
    images, labels = mnist_digits
    return ray_session.data.from_items([{"image": images[i][:, :, None], "label": int(labels[i])} for i in range(256)])


def test_every_method_is_registered_here() -> None:
    from ssl_models.methods import METHODS

    assert sorted(ALL_METHODS) == sorted(METHODS)


#: each method with one policy, alternating, so both policies meet conv and ViT backbones, queues, EMA
#: teachers and per-sample state (both policies are covered in depth above); plus SimCLR on a ViT backbone
METHOD_POLICY = [(m, ("cluster_balance", "loss_based")[i % 2]) for i, m in enumerate(ALL_METHODS)]
METHOD_POLICY.append(("simclr-vit", "loss_based"))


@pytest.mark.parametrize(("method", "policy"), METHOD_POLICY)
def test_every_method_trains_with_dynamic_pruning(digits_256, tmp_path: Path, method: str, policy: str) -> None:
    """The config layer builds every registered method and Ray Train runs it, first on the full pool, then
    through pruning rounds: pruning only needs the method's backbone (conv or ViT) and keeps global sample
    ids (iSogCLR's per-sample temperatures), so every method must reach its full step budget."""
    from pipelines.config import load_config
    from pipelines.pretrain import pretrain

    overrides = [
        f"run_dir={tmp_path}", "train.num_workers=0", "train.epochs=2", "train.batch_size=32", "train.warmup_epochs=0",
        "backbone.width=8", "train.knn_monitor_every=0",
        f"method.name={method.removesuffix('-vit')}", f"dynamic.policy={policy}", "dynamic.warmup_epochs=1",
        "dynamic.every_epochs=1", "dynamic.keep_fraction=0.5",
    ]
    if method not in ("mae", "siameseim"):  # small heads; the masked-image methods have a decoder, no projector
        overrides += ["method.proj_hidden_dim=32", "method.proj_dim=16"]
    if method == "siameseim":  # it crops the views itself: feed colour-only views
        overrides += ["augment.crop_scale_min=1.0"]
    if method in ("mae", "siameseim", "simclr-vit"):  # a 2-block ViT-Tiny (the named size has 12)
        overrides += ["backbone.name=vit_tiny", "backbone.vit_depth=2"]
    history = pretrain(load_config(None, overrides), digits_256, tmp_path).history
    assert history[-1]["step"] == 2 * (256 // 32)  # equal optimizer steps to the unpruned plan
    assert [h["active_samples"] for h in history] == [256, 128, 128]  # 8 full steps, then 2 half epochs of 4
    assert sum("prune_round_seconds" in h for h in history) == 2  # a round before each pruned epoch
    assert all(np.isfinite(h["loss"]) for h in history)
