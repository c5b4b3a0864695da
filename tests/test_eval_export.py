"""`sslpipe eval CHECKPOINT` and `sslpipe export`: standalone evaluation and an export that needs no sslpipe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from curation.planting import encode_png
from curation.shards import Sample, write_shards
from pipelines.cli import main
from pipelines.config import load_config
from pipelines.pretrain import pretrain
from tests.object_store import moto_s3  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parent.parent


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


#: runs an export's own load_backbone.py with sslpipe unimportable (-I: no PYTHONPATH, no cwd on the path; and
#: the venv's editable install of sslpipe is blocked: importing any of its packages raises ImportError)
_STANDALONE = (
    "import runpy, sys\n"
    "sys.modules.update({'pipelines': None, 'ssl_models': None, 'curation': None})\n"
    "export_dir, images = sys.argv[1], sys.argv[2]\n"
    "sys.argv = [export_dir + '/load_backbone.py', export_dir, images]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def _features_outside_sslpipe(export_dir: Path, images: np.ndarray, tmp_path: Path) -> np.ndarray:
    path = tmp_path / f"images_{images.shape[1]}.npy"
    np.save(path, images)
    proc = subprocess.run([sys.executable, "-I", "-c", _STANDALONE, str(export_dir), str(path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(path.with_suffix(".features.npy"))


def _assert_same_features(export_dir: Path, ckpt: Path, images: np.ndarray, tmp_path: Path) -> None:
    from pipelines.checkpoints import load_backbone_from_checkpoint
    from pipelines.eval_stage import embed

    cfg, backbone = load_backbone_from_checkpoint(ckpt)
    expected = embed(backbone, images, cfg)  # sslpipe's evaluation features
    got = _features_outside_sslpipe(export_dir, images, tmp_path)
    assert got.shape == expected.shape
    err = float(np.abs(got - expected).max())
    assert err <= 1e-5 * max(1.0, float(np.abs(expected).max())), err


def test_trained_export_reproduces_the_features_without_sslpipe(trained, tmp_path: Path) -> None:
    root, ckpt = trained
    out = tmp_path / "exported"
    assert main(["export", str(ckpt), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["architecture.json", "backbone.safetensors", "load_backbone.py"]
    record = json.loads((out / "architecture.json").read_text())
    assert record["backbone"] == {"family": "convnet_small", "in_channels": 1, "width": 8}
    assert record["input"]["size"] == 28 and record["input"]["mean"] == [0.5] and record["feature_dim"] == 32
    digits = np.random.default_rng(0).integers(0, 256, (6, 28, 28, 1), dtype=np.uint8)
    _assert_same_features(out, ckpt, digits, tmp_path)


def _random_checkpoint(cfg, tmp_path: Path) -> Path:
    """A checkpoint of ``cfg``'s method with BatchNorm statistics moved off their init (one train-mode pass)."""
    from pipelines.config import config_to_dict
    from pipelines.models import build_method_from_config

    method = build_method_from_config(cfg)
    method.train()
    with torch.no_grad():
        method.backbone(torch.randn(16, cfg.data.channels, cfg.data.image_size, cfg.data.image_size) * 2 + 0.3)
    ckpt = tmp_path / "c.pt"
    torch.save({"method": method.state_dict(), "config": config_to_dict(cfg)}, ckpt)
    return ckpt


@pytest.mark.parametrize("name, overrides, family", [
    ("cifar10.yaml", [], "torchvision_resnet"),  # resnet18, CIFAR stem, stem_relu false, 0.5 normalisation
    (None, ["backbone.name=vit_tiny", "backbone.vit_depth=2", "data.image_size=32", "data.channels=3"], "vit"),
])
def test_export_rebuilds_the_network_and_its_input_view_without_sslpipe(name, overrides, family, tmp_path: Path) -> None:
    """The export alone (safetensors weights, architecture.json, load_backbone.py) gives sslpipe's features to
    1e-5, for 32 px images and for larger ones that the recorded input view resizes."""
    cfg = load_config(REPO / "configs" / name if name else None, overrides)
    ckpt = _random_checkpoint(cfg, tmp_path)
    out = tmp_path / "exported"
    assert main(["export", str(ckpt), str(out)]) == 0
    record = json.loads((out / "architecture.json").read_text())
    assert record["backbone"]["family"] == family
    if family == "torchvision_resnet":
        assert record["backbone"] == {"family": "torchvision_resnet", "arch": "resnet18", "in_channels": 3,
                                      "cifar_stem": True, "stem_relu": False}
    rng = np.random.default_rng(1)
    for side in (32, 40):
        _assert_same_features(out, ckpt, rng.integers(0, 256, (4, side, side, 3), dtype=np.uint8), tmp_path)
    assert main(["export", str(ckpt), str(out)]) == 0  # an earlier export is replaced


def test_mae_on_a_cnn_config_trains_a_vit_says_so_and_exports_it(tmp_path: Path, caplog) -> None:
    from pipelines.checkpoints import export_backbone
    from pipelines.models import build_method_from_config
    from ssl_models.vit import VisionTransformer

    cfg = load_config(None, ["method.name=mae", "backbone.name=resnet18", "backbone.patch_size=7", "backbone.vit_depth=1"])
    with caplog.at_level("WARNING", logger="sslpipe.models"):
        method = build_method_from_config(cfg)
    assert isinstance(method.backbone, VisionTransformer)
    assert method.backbone.patch_size == 7  # the config's patch size, not the method's default
    assert "backbone.name=resnet18 is replaced by vit_tiny" in caplog.text

    out = export_backbone(_random_checkpoint(cfg, tmp_path), tmp_path / "vit")
    record = json.loads((out / "architecture.json").read_text())
    assert record["backbone"]["family"] == "vit" and record["backbone"]["patch_size"] == 7
    assert record["feature_dim"] == method.feature_dim and record["source"]["backbone_name"] == "resnet18"


def test_export_refuses_a_folder_that_is_not_an_export(tmp_path: Path) -> None:
    from curation.errors import InputError
    from pipelines.checkpoints import export_backbone

    ckpt = _random_checkpoint(load_config(None, ["backbone.width=8", "method.proj_hidden_dim=32",
                                                 "method.proj_dim=16"]), tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not an earlier export"):
        export_backbone(ckpt, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_a_checkpoint_from_before_per_method_keys_still_loads(tmp_path: Path) -> None:
    """Old checkpoints stored temperature and projector sizes for every method; the method ignored the ones
    it does not take (BYOL's temperature), so loading drops exactly those."""
    from pipelines.checkpoints import load_backbone_from_checkpoint
    from pipelines.config import config_to_dict
    from pipelines.models import build_method_from_config

    cfg = load_config(None, ["method.name=byol", "backbone.width=8", "method.proj_hidden_dim=32", "method.proj_dim=16"])
    old_config = config_to_dict(cfg)
    old_config["method"].update(temperature=0.2, proj_output_bn=False)  # what the old MethodConfig wrote
    ckpt = tmp_path / "old.pt"
    torch.save({"method": build_method_from_config(cfg).state_dict(), "config": old_config}, ckpt)
    loaded, backbone = load_backbone_from_checkpoint(ckpt)
    assert loaded.method.temperature is None and loaded.method.proj_dim == 16


def test_eval_refuses_a_malicious_checkpoint(tmp_path: Path, capsys) -> None:
    import pickle

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(eval))  # a global function reference: weights_only refuses it
    assert main(["eval", str(evil), "--data", str(tmp_path), "--eval-data", str(tmp_path)]) == 2
    assert "not a loadable sslpipe checkpoint" in capsys.readouterr().err


def test_export_reads_and_writes_object_storage_like_a_run_directory(moto_s3, tmp_path: Path) -> None:  # noqa: F811
    """A checkpoint in a bucket exports to a bucket folder: the same three files as a local export, byte for
    byte; a bucket folder holding anything else is refused, untouched."""
    import storage
    from curation.errors import InputError
    from pipelines.checkpoints import EXPORT_FILES, export_backbone
    from tests.object_store import BUCKET

    ckpt = _random_checkpoint(load_config(None, ["backbone.width=8", "method.proj_hidden_dim=32",
                                                 "method.proj_dim=16"]), tmp_path)
    remote_ckpt = storage.put_file(ckpt, f"s3://{BUCKET}/runs/r/checkpoint.pt")
    local = export_backbone(ckpt, tmp_path / "local")
    out = f"s3://{BUCKET}/runs/r/export"
    assert main(["export", remote_ckpt, out]) == 0
    assert moto_s3.objects(f"{BUCKET}/runs/r/export") == [f"{BUCKET}/runs/r/export/{n}" for n in sorted(EXPORT_FILES)]
    for name in EXPORT_FILES:
        assert storage.read_bytes(storage.join(out, name)) == (local / name).read_bytes(), name
    storage.write_text(f"s3://{BUCKET}/busy/notes.txt", "mine")
    with pytest.raises(InputError, match="not an earlier export"):
        export_backbone(remote_ckpt, f"s3://{BUCKET}/busy")
    assert moto_s3.objects(f"{BUCKET}/busy") == [f"{BUCKET}/busy/notes.txt"]
