"""`sslpipe eval CHECKPOINT` and `sslpipe export`: standalone evaluation and an export that needs no sslpipe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from curation.planting import encode_png
from curation.shards import Sample, write_shards
from pipelines.cli import main
from pipelines.config import load_config
from pipelines.pretrain import pretrain


@pytest.fixture(scope="module")
def trained(ray_session, mnist_digits, tmp_path_factory: pytest.TempPathFactory):
    images, labels = mnist_digits
    root = tmp_path_factory.mktemp("evalrun")
    for name, lo, hi in (("train", 0, 600), ("test", 4000, 4300)):
        write_shards([Sample(f"{name}{i:05d}", encode_png(images[i]), "png", int(labels[i])) for i in range(lo, hi)],
                     root / name, shard_size=200)
    cfg = load_config(None, [f"run_dir={root}", "train.num_workers=0", "train.epochs=1", "train.batch_size=64",
                             "backbone.width=8", "method.proj_hidden_dim=32", "method.proj_dim=16",
                             "train.knn_monitor_every=0"])
    rows = [{"image": images[i][:, :, None], "label": int(labels[i])} for i in range(256)]
    result = pretrain(cfg, ray_session.data.from_items(rows), root)
    return root, result.checkpoint_path


def test_eval_writes_every_figure_with_its_protocol(trained) -> None:
    root, ckpt = trained
    out = root / "eval_out"
    assert main(["eval", str(ckpt), "--data", str(root / "train"), "--eval-data", str(root / "test"),
                 "--out", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text())
    for key in ("knn_top1", "knn_protocols", "linear_probe", "few_shot", "per_class", "robustness", "embedding_plot"):
        assert key in result, key
    assert set(result["knn_protocols"]) == {"kNN k=200 T=0.1 (LightlySSL CIFAR-10 protocol)", "kNN k=20 T=0.07 (DINO protocol)"}
    assert 0.3 < result["linear_probe"]["top1"] <= 1.0
    assert result["few_shot"]["10%"]["mean"] > result["few_shot"]["1%"]["mean"] - 0.05
    page = (out / "eval.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "http" not in page


def test_export_loads_without_sslpipe(trained, tmp_path: Path) -> None:
    _, ckpt = trained
    out = tmp_path / "backbone.pt"
    assert main(["export", str(ckpt), str(out)]) == 0
    code = (  # sslpipe's packages are made unimportable: any import of them raises ImportError
        "import sys; sys.modules.update({'pipelines': None, 'ssl_models': None, 'curation': None})\n"
        "import torch\n"
        f"m = torch.jit.load({str(out)!r}); print(tuple(m(torch.zeros(2, 1, 28, 28)).shape))"
    )
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "(2, 32)"


def test_resnet_export_is_a_plain_torchvision_state_dict(tmp_path: Path) -> None:
    import torchvision

    from pipelines.checkpoints import export_backbone
    from pipelines.models import build_method_from_config

    cfg = load_config(None, ["backbone.name=resnet18", "data.channels=3", "data.image_size=32"])
    method = build_method_from_config(cfg)
    from pipelines.config import config_to_dict

    ckpt = tmp_path / "c.pt"
    torch.save({"method": method.state_dict(), "config": config_to_dict(cfg)}, ckpt)
    exported = torch.load(export_backbone(ckpt, tmp_path / "r18.pt"), weights_only=True)
    net = torchvision.models.resnet18(weights=None)
    net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the CIFAR stem, as recorded in the export
    net.maxpool, net.fc = torch.nn.Identity(), torch.nn.Identity()
    net.load_state_dict(exported["state_dict"], strict=True)
    assert exported["arch"] == "resnet18" and exported["cifar_stem"] is True


def test_mae_on_a_cnn_config_trains_a_vit_says_so_and_exports_it(tmp_path: Path, caplog) -> None:
    from pipelines.checkpoints import export_backbone
    from pipelines.config import config_to_dict
    from pipelines.models import build_method_from_config
    from ssl_models.vit import VisionTransformer

    cfg = load_config(None, ["method.name=mae", "backbone.name=resnet18", "backbone.patch_size=7", "backbone.vit_depth=1"])
    with caplog.at_level("WARNING", logger="sslpipe.models"):
        method = build_method_from_config(cfg)
    assert isinstance(method.backbone, VisionTransformer)
    assert method.backbone.patch_size == 7  # the config's patch size, not the method's default
    assert "backbone.name=resnet18 is replaced by vit_tiny" in caplog.text

    ckpt = tmp_path / "c.pt"
    torch.save({"method": method.state_dict(), "config": config_to_dict(cfg)}, ckpt)
    exported = torch.jit.load(str(export_backbone(ckpt, tmp_path / "vit.pt")))  # TorchScript, not a ResNet dict
    assert tuple(exported(torch.zeros(2, 1, 28, 28)).shape) == (2, method.feature_dim)


def test_eval_refuses_a_malicious_checkpoint(tmp_path: Path, capsys) -> None:
    import pickle

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(eval))  # a global function reference: weights_only refuses it
    assert main(["eval", str(evil), "--data", str(tmp_path), "--eval-data", str(tmp_path)]) == 2
    assert "not a loadable sslpipe checkpoint" in capsys.readouterr().err
