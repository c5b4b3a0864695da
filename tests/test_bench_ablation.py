"""bench/ablation.py: each variant is the config it claims, the forced NT-Xent is NT-Xent in the dtype it
names whatever autocast says, and the table's mean and spread are over seeds. No training here."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from ssl_models.losses.ntxent import nt_xent_loss

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("bench_ablation", REPO / "bench" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _opts(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"epochs": 1, "train_images": 10240, "test_images": 0, "batch": 256,
                                 "precision": "bf16", **kw})


def test_each_variant_switches_what_it_names_and_nothing_else(ablation, tmp_path: Path) -> None:
    quality = ablation.load_quality()
    cfgs = {name: quality.sslpipe_config(tmp_path, ablation.quality_args(v, 0, _opts()))
            for name, v in ablation.VARIANTS.items() if v.system == "sslpipe"}
    base = cfgs["baseline"]
    assert base.backbone.conv_init == "kaiming_fan_out" and base.augment.renderer == "batched"
    assert base.train.num_workers == 2 and base.data.normalization() == ((0.5,) * 3, (0.5,) * 3)
    assert cfgs["torch_init"].backbone.conv_init == "torch_default"
    assert cfgs["tv_views"].augment.renderer == "torchvision"
    one_worker = cfgs["one_worker"].train
    assert one_worker.num_workers == 1 and one_worker.cpus_per_worker == base.train.cpus_per_worker * 2
    assert cfgs["imagenet_norm"].data.normalization() == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    every = cfgs["all_lightly"]
    assert (every.backbone.conv_init, every.augment.renderer, every.train.num_workers) == ("torch_default", "torchvision", 1)
    assert every.data.normalization() == cfgs["imagenet_norm"].data.normalization()
    for name in ("torch_init", "tv_views", "one_worker", "imagenet_norm", "ntxent_fp32", "ntxent_bf16"):
        assert ablation.init_key(cfgs[name]) == ablation.init_key(base) or name in ("torch_init", "imagenet_norm")
    assert ablation.init_key(cfgs["torch_init"]) != ablation.init_key(base)
    assert ablation.init_key(cfgs["imagenet_norm"]) != ablation.init_key(base)  # the init's kNN embeds with it


def test_the_loss_dtype_follows_lightly_in_all_lightly_and_is_forced_in_the_ntxent_rows(ablation) -> None:
    v = ablation.VARIANTS
    assert ablation.ntxent_dtype(v["all_lightly"], "bf16") == "bf16"  # LightlySSL's loss runs in the autocast region
    assert ablation.ntxent_dtype(v["all_lightly"], "fp32") is None
    assert ablation.ntxent_dtype(v["ntxent_fp32"], "bf16") == "fp32"
    assert ablation.ntxent_dtype(v["ntxent_bf16"], "bf16") == "bf16"
    assert ablation.ntxent_dtype(v["baseline"], "bf16") is None


def test_forced_ntxent_is_ntxent_in_the_dtype_it_names(ablation) -> None:
    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(256, 128, generator=gen), torch.randn(256, 128, generator=gen)
    reference = nt_xent_loss(z1, z2, 0.5)  # no autocast: fp32 all through
    fp32 = ablation.forced_nt_xent(z1, z2, 0.5, torch.float32)
    torch.testing.assert_close(fp32, reference, atol=1e-6, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # forced fp32 ignores the autocast region
        torch.testing.assert_close(ablation.forced_nt_xent(z1, z2, 0.5, torch.float32), reference, atol=1e-6, rtol=0)
    bf16 = ablation.forced_nt_xent(z1, z2, 0.5, torch.bfloat16)
    # bf16 keeps 8 mantissa bits: the similarities move by ~1e-3 and the loss with them, but not by much
    assert 1e-5 < abs(float(bf16 - reference)) < 1e-2
    # and it is the loss of bf16-rounded similarities, which is what a bf16 autocast region computes
    n = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    sims = (n.bfloat16() @ n.bfloat16().T).float() / 0.5
    sims.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(256) + 256, torch.arange(256)])
    torch.testing.assert_close(bf16, torch.nn.functional.cross_entropy(sims, target), atol=1e-6, rtol=0)


def test_forced_ntxent_has_gradients(ablation) -> None:
    z1 = torch.randn(8, 16, requires_grad=True)
    z2 = torch.randn(8, 16, requires_grad=True)
    ablation.forced_nt_xent(z1, z2, 0.5, torch.bfloat16).backward()
    assert z1.grad is not None and z1.grad.abs().sum() > 0 and z1.grad.dtype == torch.float32


def test_records_resume_and_the_table_is_over_seeds(ablation, tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    opts = _opts(precision="fp32")
    for seed, gain, final in ((0, 4.0, 0.40), (1, 5.0, 0.42)):
        ablation.append_record(results, {"kind": "run", **ablation.run_key("baseline", seed, opts),
                                         "gain_points": gain, "knn_top1": final, "knn_top1_at_init": final - gain / 100})
    records = ablation.read_records(results)
    assert ablation.has_record(records, ablation.run_key("baseline", 1, opts)) is not None
    assert ablation.has_record(records, ablation.run_key("baseline", 2, opts)) is None
    assert ablation.has_record(records, ablation.run_key("baseline", 0, _opts(precision="bf16"))) is None
    (row,) = ablation.summarise(records, opts)
    assert (row["gain_mean"], row["gain_spread"], row["knn_mean"], row["knn_spread"]) == (4.5, 1.0, 41.0, 2.0)
    assert row["seeds"] == [0, 1]


def test_calibrated_batchnorm_holds_the_exact_statistics_of_the_calibration_data(ablation) -> None:
    """As built, eval mode passes activations through a BatchNorm unnormalised (running mean 0, variance 1);
    calibrated, it normalises with the statistics of the data, as train mode does, and keeps its momentum."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, bias=False)
    net = torch.nn.Sequential(conv, torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    batches = [torch.randn(16, 3, 8, 8) * 3 + 1 for _ in range(3)]
    with torch.no_grad():
        acts = torch.cat([conv(x) for x in batches])
    ablation.calibrate_batchnorm(net, batches)
    bn = net[1]
    assert not net.training and bn.momentum == 0.1
    torch.testing.assert_close(bn.running_mean, acts.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-5)
    per_batch_var = torch.stack([conv(x).detach().var(dim=(0, 2, 3)) for x in batches]).mean(0)  # unbiased, averaged
    torch.testing.assert_close(bn.running_var, per_batch_var, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        normalised = bn(acts)
    assert abs(float(normalised.mean())) < 1e-3 and abs(float(normalised.var()) - 1) < 0.05
