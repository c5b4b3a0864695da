"""Config is typed and validated on load: errors name the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import ConfigError, RunConfig, config_from_dict, load_config

REPO = Path(__file__).resolve().parent.parent


def test_defaults_are_valid_and_typed() -> None:
    cfg = load_config(None)
    assert isinstance(cfg, RunConfig)
    assert cfg.train.num_workers == 2 and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize("name", ["demo.yaml", "cifar10.yaml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(REPO / "configs" / name)
    assert cfg.method.name == "simclr"


def test_overrides_are_parsed_as_yaml_and_validated() -> None:
    cfg = load_config(None, ["train.epochs=3", "method.temperature=0.5", "ray.address=null"])
    assert cfg.train.epochs == 3 and cfg.method.temperature == 0.5 and cfg.ray.address is None


@pytest.mark.parametrize(
    "data, key, allowed",
    [
        ({"train": {"epoch": 3}}, "train.epoch", "allowed keys"),
        ({"trian": {}}, "trian", "allowed keys: run_dir"),
        ({"train": {"epochs": "many"}}, "train.epochs", "an integer"),
        ({"train": {"epochs": 1.5}}, "train.epochs", "an integer"),
        ({"train": {"use_gpu": "yes"}}, "train.use_gpu", "true or false"),
        ({"method": {"name": "simsiam"}}, "method.name", "one of 'simclr', 'dcl'"),
        ({"data": {"channels": 2}}, "data.channels", "one of 1, 3"),
        ({"method": {"temperature": 0}}, "method.temperature", "[0.001, 10]"),
        ({"train": {"batch_size": 255}}, "train.batch_size", "multiple of train.num_workers"),
        ({"augment": {"crop_scale_min": 0.9, "crop_scale_max": 0.5}}, "augment.crop_scale_min", "min <= max"),
        ({"augment": {"renderer": "pil"}}, "augment.renderer", "'batched' or 'torchvision'"),
        ({"train": 5}, "train", "a mapping with keys"),
        ({"curate": {"balance_fraction": 0.5}}, "curate.embedder", "'random_convnet' or 'checkpoint'"),
        ({"curate": {"balance_levels": [10, 100]}}, "curate.balance_levels", "finest level first"),
        ({"curate": {"semdedup_mode": "greedy"}}, "curate.semdedup_mode", "'reference', 'kept_only'"),
        ({"dynamic": {"keep_fraction": 0}}, "dynamic.keep_fraction", "a fraction in (0, 1]"),
        ({"dynamic": {"policy": "random"}}, "dynamic.policy", "'cluster_balance'"),
        ({"train": {"batch_size": 256, "grad_accum_steps": 3}}, "train.grad_accum_steps", "a divisor"),
        ({"backbone": {"name": "vit_tiny", "patch_size": 5}}, "backbone.patch_size", "a divisor of data.image_size (28)"),
        ({"method": {"name": "mae"}, "backbone": {"patch_size": 8}}, "backbone.patch_size", "a divisor of data.image_size"),
        ({"backbone": {"name": "vit_huge"}}, "backbone.name", "'vit_tiny', 'vit_small'"),
    ],
)
def test_bad_values_name_the_key_and_the_allowed_values(data: dict, key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert f"'{key}" in str(err.value)
    assert allowed in str(err.value)


def test_bad_override_syntax_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


def test_method_names_match_the_registry() -> None:
    import typing

    from pipelines.config import MASKED_IMAGE_METHODS, MethodConfig
    from ssl_models.methods import METHODS

    assert set(typing.get_args(typing.get_type_hints(MethodConfig)["name"])) == set(METHODS)
    assert MASKED_IMAGE_METHODS == {name for name, cls in METHODS.items() if cls.needs_vit}


def test_backbone_zero_init_residual_reaches_the_resnet() -> None:
    import torch
    import torchvision

    from pipelines.models import build_method_from_config

    cfg = load_config(None, ["backbone.name=resnet18", "data.channels=3", "data.image_size=32",
                             "backbone.zero_init_residual=true"])
    blocks = [m for m in build_method_from_config(cfg).backbone.modules()
              if isinstance(m, torchvision.models.resnet.BasicBlock)]
    assert len(blocks) == 8 and all(torch.all(b.bn2.weight == 0) for b in blocks)


def test_backbone_stem_relu_false_reaches_the_resnet() -> None:
    import torch

    from pipelines.models import build_method_from_config

    base = ["backbone.name=resnet18", "data.channels=3", "data.image_size=32"]
    with_relu = build_method_from_config(load_config(None, base)).backbone
    without = build_method_from_config(load_config(None, [*base, "backbone.stem_relu=false"])).backbone
    assert isinstance(with_relu.relu, torch.nn.ReLU) and isinstance(without.relu, torch.nn.Identity)


FLOAT_SPELLINGS = ["1e-3", "1E-3", "1.0e-3", "1.e-3", "+1e-3", "1e-03", "0.001", ".001", "1_0e-4", "10.0E-4"]


@pytest.mark.parametrize("spelling", FLOAT_SPELLINGS)
def test_every_float_spelling_is_a_number_on_the_command_line_and_in_files(spelling: str, tmp_path: Path) -> None:
    """PyYAML (YAML 1.1) reads ``1e-3`` as a string; a config must read it as the number it is."""
    assert load_config(None, [f"train.lr={spelling}"]).train.lr == pytest.approx(1e-3)
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  lr: {spelling}\n  weight_decay: {spelling}\n")
    cfg = load_config(path)
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.train.weight_decay == pytest.approx(1e-3)


def test_exponent_floats_in_sweep_files(tmp_path: Path) -> None:
    from pipelines.sweep import load_search_space

    (tmp_path / "base.yaml").write_text("train: {num_workers: 0, lr: 2e-3}\n")
    path = tmp_path / "sweep.yaml"
    path.write_text("base: base.yaml\noverrides: {train.weight_decay: 5e-4}\n"
                    "search: {train.lr: {loguniform: [1e-4, 1E-2]}}\n")
    spec = load_search_space(path)
    assert spec.search["train.lr"].values == [1e-4, 1e-2]
    assert (spec.base.train.lr, spec.base.train.weight_decay) == (2e-3, 5e-4)


def test_strings_and_integers_stay_what_they_were() -> None:
    from pipelines.config import load_yaml

    assert load_yaml("a: 5\nb: 1_000\nc: e5\nd: 1e\ne: v1e3\nf: '1e-3'\ng: .inf") == \
        {"a": 5, "b": 1000, "c": "e5", "d": "1e", "e": "v1e3", "f": "1e-3", "g": float("inf")}
