"""bench/quality.py compares like with like: the same recipe, the same views, the same images.

No training here (a ResNet-18 step takes seconds on 2 cores); the bench itself is run by hand.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(**kw) -> argparse.Namespace:
    base = {"epochs": 1, "batch": 256, "seed": 0, "sslpipe_workers": 2, "train_images": 0, "compile": False,
            "sslpipe_set": [], "precision": "fp32"}
    return argparse.Namespace(**{**base, **kw})


def test_sslpipe_config_is_lightlys_cifar10_recipe(quality, tmp_path: Path) -> None:
    cfg = quality.sslpipe_config(tmp_path, _args(epochs=3, batch=512))
    assert (cfg.backbone.name, cfg.backbone.cifar_stem, cfg.method.name) == ("resnet18", True, "simclr")
    assert not cfg.backbone.stem_relu  # lightly's Sequential-over-children backbone has no stem ReLU
    assert (cfg.method.temperature, cfg.method.proj_hidden_dim, cfg.method.proj_dim) == (0.5, 512, 128)
    t = cfg.train
    assert (t.optimizer, t.lr, t.weight_decay, t.batch_size, t.epochs) == ("sgd", 0.06 * 512 / 128, 5e-4, 512, 3)
    assert (t.warmup_epochs, t.schedule, t.precision, t.grad_accum_steps) == (0, "warmup_cosine", "fp32", 1)
    assert t.knn_monitor_every == 0 and cfg.dynamic.policy == "none"
    assert not t.compile and quality.sslpipe_config(tmp_path, _args(compile=True)).train.compile
    # --precision bf16 is both systems' precision: an explicit bf16, never configs/cifar10.yaml's host-dependent auto
    assert quality.sslpipe_config(tmp_path, _args(precision="bf16")).train.precision == "bf16"
    assert not cfg.backbone.zero_init_residual
    extra = quality.sslpipe_config(tmp_path, _args(sslpipe_set=["backbone.zero_init_residual=true"]))
    assert extra.backbone.zero_init_residual and extra.method.temperature == 0.5  # on top of the recipe


def test_both_systems_draw_views_from_the_same_distributions(quality, tmp_path: Path) -> None:
    """lightly's SimCLRTransform and the torchvision pipeline sslpipe's batched views claim to match."""
    from pipelines.models import view_recipe
    from ssl_models.augment import torchvision_recipe

    def describe(steps) -> dict:
        out = {}
        for step in steps:
            name = type(step).__name__
            if name == "RandomResizedCrop":
                out["crop"] = (tuple(step.size), tuple(step.scale), tuple(round(r, 4) for r in step.ratio))
            elif name == "RandomHorizontalFlip":
                out["hflip"] = step.p
            elif name == "RandomVerticalFlip":
                out["vflip"] = step.p
            elif name == "RandomApply":
                (jitter,) = step.transforms
                out["jitter_p"] = step.p
                out["jitter"] = tuple(tuple(round(v, 4) for v in getattr(jitter, k))
                                      for k in ("brightness", "contrast", "saturation", "hue"))
            elif name == "RandomGrayscale":
                out["gray"] = step.p
            elif name == "GaussianBlur":  # lightly's own class: a probability
                out["blur"] = step.prob
            elif name == "RandomRotate":
                out["rotate"] = step.prob
        return out

    lightly_views = quality.lightly_transform()
    assert len(lightly_views.transforms) == 2
    theirs = describe(lightly_views.transforms[0].transform.transforms)
    ours = describe(torchvision_recipe(view_recipe(quality.sslpipe_config(tmp_path, _args()))).transforms)
    assert theirs.pop("vflip") == 0.0 and theirs.pop("rotate") == 0.0 and theirs.pop("blur") == 0.0
    assert theirs == ours
    assert ours["jitter"] == ((0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1))


def test_train_subset_is_the_same_images_for_both(quality, tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    from pipelines.sources import shard_source

    root = tmp_path / "train"
    rng = np.random.default_rng(0)
    for c in ("cat", "dog", "frog"):
        (root / c).mkdir(parents=True)
        for i in range(7):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / c / f"{i:04d}.jpg")
    picked = quality.pick_images(root, 10)
    report = shard_source(str(root), str(tmp_path / "shards"), 4, "webdataset", limit=10)
    import pyarrow.parquet as pq

    assert sorted(pq.read_table(report.index_path).column("key").to_pylist()) == sorted(k for _, _, k in picked)
    folder = ImageFolder(str(root))  # what the lightly loop indexes into
    where = {Path(p).resolve(): (i, y) for i, (p, y) in enumerate(folder.samples)}
    assert [where[Path(p).resolve()][1] for p, _, _ in picked] == [y for _, y, _ in picked]


def test_init_knn_scores_the_weights_pretrain_starts_from(quality, tmp_path: Path) -> None:
    """--init-knn rebuilds sslpipe's model after training; that is only the training's start if the build is
    fixed by the config's seed alone, whatever the global RNG went through before."""
    import torch

    from pipelines.models import build_method_from_config

    cfg = quality.sslpipe_config(tmp_path, _args())
    first = build_method_from_config(cfg).backbone.state_dict()
    torch.rand(1000)  # training and evaluation draw from the global RNG in between
    again = build_method_from_config(cfg).backbone.state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    other = build_method_from_config(quality.sslpipe_config(tmp_path, _args(seed=1))).backbone.state_dict()
    assert not torch.equal(first["conv1.weight"], other["conv1.weight"])


def test_sslpipe_projection_head_is_lightlys_simclr_head(quality, tmp_path: Path) -> None:
    """lightly 1.6's SimCLRProjectionHead(512, 512, 128): Linear(no bias), BN, ReLU, Linear(no bias), BN."""
    from torch import nn

    from pipelines.models import build_method_from_config

    cfg = quality.sslpipe_config(tmp_path, _args())
    head = build_method_from_config(cfg).projector
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    assert [(m.in_features, m.out_features, m.bias is None) for m in head if isinstance(m, nn.Linear)] == [
        (512, 512, True), (512, 128, True)]


@pytest.mark.parametrize("stem_relu", [False, True])
def test_sslpipe_backbone_computes_lightlys_benchmark_backbone_only_without_the_stem_relu(
        quality, tmp_path: Path, stem_relu: bool) -> None:
    """Given lightly's weights, the bench's sslpipe backbone is the same function as the lightly loop's
    (``nn.Sequential`` over ``ResNetGenerator``'s children, which has no stem ReLU); with the ReLU it is not."""
    import torch

    from pipelines.models import build_method_from_config

    torch.manual_seed(0)
    theirs = quality.lightly_backbone()
    cfg = quality.sslpipe_config(tmp_path, _args(sslpipe_set=[f"backbone.stem_relu={str(stem_relu).lower()}"]))
    ours = build_method_from_config(cfg).backbone
    # the same module order (conv1, bn1, blocks of conv1, bn1, conv2, bn2, shortcut/downsample), so copy by position
    src, dst = list(theirs.state_dict().values()), ours.state_dict()
    assert len(src) == len(dst) and all(a.shape == b.shape for a, b in zip(src, dst.values()))
    ours.load_state_dict(dict(zip(dst, src)))
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        same = torch.allclose(ours(x).flatten(1), theirs(x).flatten(1), atol=1e-5)
    assert same != stem_relu


def test_like_for_like_row_changes_only_the_allocator_and_the_init_scheme(quality, tmp_path: Path) -> None:
    """The like-for-like sslpipe run is the as-shipped recipe with lightly's malloc and lightly's init scheme
    (PyTorch's default, which ResNetGenerator keeps), nothing else."""
    from pipelines.config import config_to_dict

    shipped = config_to_dict(quality.sslpipe_config(tmp_path, _args()))
    like = config_to_dict(quality.sslpipe_config(tmp_path, _args(), quality.like_for_like_overrides("system")))
    assert (like["train"]["allocator"], like["backbone"]["conv_init"]) == ("system", "torch_default")
    assert (shipped["train"]["allocator"], shipped["backbone"]["conv_init"]) == ("auto", "kaiming_fan_out")
    for section, key in (("train", "allocator"), ("backbone", "conv_init")):
        del like[section][key], shipped[section][key]
    assert like == shipped


def test_verdict_states_every_goal_and_both_gains_on_both_rows(quality) -> None:
    def run(knn: float, init: float, speed: float, malloc: str) -> dict:
        return {"knn_top1": knn, "knn_top1_at_init": init, "images_per_s": speed, "malloc": malloc}

    rows = quality.verdict({"lightly": run(0.42, 0.35, 40.0, "glibc"), "sslpipe": run(0.45, 0.38, 50.0, "tcmalloc"),
                            "sslpipe_like_for_like": run(0.43, 0.35, 44.0, "glibc")})
    assert list(rows) == ["as_shipped", "like_for_like"]
    shipped, like = rows["as_shipped"], rows["like_for_like"]
    assert shipped["speed_ratio_sslpipe_over_lightly"] == 1.25 and shipped["knn_difference_points"] == 3.0
    assert shipped["goals"] == {"speed >= 1.2x": "met", "kNN >= +2 points": "met"}
    assert like["goals"] == {"speed >= 1.2x": "not met", "kNN >= +2 points": "not met"}
    # the as-shipped kNN lead is all init: both gains equal lightly's
    assert shipped["knn_gain_over_init_points"] == {"lightly": 7.0, "sslpipe": 7.0}
    assert shipped["gain_difference_points"] == 0.0 and like["gain_difference_points"] == 1.0
    assert list(quality.verdict({"lightly": run(0.4, 0.3, 1.0, "glibc"), "sslpipe": run(0.4, 0.3, 1.0, "x")})) == [
        "as_shipped"]
