"""Config is typed and validated on load: errors name the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import ConfigError, PipelineConfig, config_from_dict, load_config

REPO = Path(__file__).resolve().parent.parent


def test_defaults_are_valid_and_typed() -> None:
    cfg = load_config(None)
    assert isinstance(cfg, PipelineConfig)
    assert cfg.train.num_workers == 2 and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize("name", ["demo.yaml", "cifar10.yaml", "collection.yaml"])
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
        ({"dynamic": {"policy": "prune_all"}}, "dynamic.policy", "'cluster_balance'"),
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


# --------------------------------------------------------------------------- method hyperparameters


def test_method_keys_and_constructor_signatures_are_in_step() -> None:
    """Every constructor argument of every method is a typed ``method:`` key the method takes (METHOD_KEYS),
    or derived from another section (DERIVED_METHOD_ARGS); every ``method:`` key has a rule."""
    import inspect
    import typing

    from pipelines.config import _METHOD_RULES, DERIVED_METHOD_ARGS, METHOD_KEYS, MethodConfig
    from ssl_models.methods import METHODS

    fields = typing.get_type_hints(MethodConfig)
    assert set(METHOD_KEYS) == set(METHODS)
    for name, cls in METHODS.items():
        params = list(inspect.signature(cls.__init__).parameters)[3:]  # self, backbone, feature_dim
        assert set(METHOD_KEYS[name]) == set(params) - set(DERIVED_METHOD_ARGS), name
        hints = typing.get_type_hints(cls.__init__)
        for key in METHOD_KEYS[name]:
            (config_type,) = [a for a in typing.get_args(fields[key]) if a is not type(None)]
            ctor = hints[key]
            if typing.get_origin(ctor) is tuple:  # YAML has lists: a tuple argument is a list key
                assert typing.get_origin(config_type) is list, key
                assert set(typing.get_args(ctor)) == set(typing.get_args(config_type)), key
            elif typing.get_origin(config_type) is typing.Literal:
                assert {type(a) for a in typing.get_args(config_type)} == {ctor}, key
            else:
                assert config_type is ctor, (name, key, config_type, ctor)
    used = {k for keys in METHOD_KEYS.values() for k in keys}
    assert used == set(fields) - {"name"} == set(_METHOD_RULES)


def test_unset_method_keys_keep_each_methods_own_defaults() -> None:
    """The global projector sizes once replaced every method's (BYOL trained a 256 -> 64 projector)."""
    import inspect

    from pipelines.models import build_method_from_config, resolved_method_hparams
    from ssl_models.methods import METHODS

    for name, cls in METHODS.items():
        defaults = {p.name: p.default for p in list(inspect.signature(cls.__init__).parameters.values())[3:]}
        resolved = resolved_method_hparams(load_config(None, [f"method.name={name}"]))
        derived = {"img_size", "in_chans", "seed", "num_samples"}
        assert {k: v for k, v in resolved.items() if k not in derived} == \
            {k: v for k, v in defaults.items() if k not in derived}, name
    byol = build_method_from_config(load_config(None, ["method.name=byol"]))
    assert (byol.projector[0].out_features, byol.projector[-1].out_features) == (4096, 256)
    assert byol.predictor[0].out_features == 4096 and byol.base_momentum == 0.996


def test_a_key_the_method_does_not_take_is_an_error_naming_the_method_and_its_keys() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["method.name=byol", "method.temperature=0.1"])
    msg = str(err.value)
    assert "'method.temperature'" in msg and "byol" in msg
    assert "byol takes: base_momentum, pred_hidden_dim, proj_dim, proj_hidden_dim" in msg
    with pytest.raises(ConfigError, match="'method.queue_size'.*simclr takes: proj_dim"):
        load_config(None, ["method.queue_size=4096"])


@pytest.mark.parametrize("override, allowed", [
    ("method.queue_size=0", "an integer >= 1"),
    ("method.momentum=1.5", "[0, 1)"),
    ("method.queue_size=1.5", "an integer"),
    ("method.symmetric=maybe", "true or false"),
    ("method.mochi_num_mix=-1", "an integer >= 0"),
])
def test_method_keys_are_typed_and_validated(override: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["method.name=moco_v2", override])
    assert f"'{override.split('=')[0]}'" in str(err.value) and allowed in str(err.value)
    with pytest.raises(ConfigError, match="two numbers"):
        load_config(None, ["method.name=siameseim", "method.crop_scale=[0.5, 0.2]"])
    with pytest.raises(ConfigError, match="'method.decoder_heads'"):
        load_config(None, ["method.name=mae", "method.decoder_dim=64", "method.decoder_heads=3"])


def test_lightly_cifar10_moco_recipe_is_expressible_in_yaml(tmp_path: Path) -> None:
    """LightlySSL's CIFAR-10 MoCo benchmark: memory bank 4,096, momentum 0.99, temperature 0.1, 512 -> 128 head."""
    from pipelines.models import build_method_from_config

    path = tmp_path / "moco.yaml"
    path.write_text("data: {image_size: 32, channels: 3}\nbackbone: {name: resnet18, cifar_stem: true}\n"
                    "method:\n  name: moco_v2\n  queue_size: 4096\n  momentum: 0.99\n  temperature: 0.1\n"
                    "  proj_hidden_dim: 512\n  proj_dim: 128\n")
    method = build_method_from_config(load_config(path))
    assert tuple(method.queue.shape) == (4096, 128)
    assert (method.momentum, method.temperature) == (0.99, 0.1)
    assert method.projector[0].out_features == 512


def test_sweeps_reach_every_method_key_and_refuse_keys_the_method_ignores(tmp_path: Path) -> None:
    from pipelines.models import build_method_from_config
    from pipelines.sweep import load_search_space, trial_config

    path = tmp_path / "sweep.yaml"
    path.write_text("config: {train: {num_workers: 0}, method: {name: moco_v2, proj_hidden_dim: 32, proj_dim: 16}}\n"
                    "search: {method.queue_size: {grid: [256, 4096]}, method.momentum: {uniform: [0.9, 0.999]}}\n")
    spec = load_search_space(path)
    cfg = trial_config(spec.base, {"method.queue_size": 4096, "method.momentum": 0.95})
    method = build_method_from_config(cfg)
    assert method.queue.shape[0] == 4096 and method.momentum == 0.95
    path.write_text("config: {train: {num_workers: 0}, method: {name: byol}}\n"
                    "search: {method.temperature: {grid: [0.1, 0.5]}}\n")
    with pytest.raises(ConfigError, match="'method.temperature'.*byol"):  # identical trials, refused up front
        load_search_space(path)
