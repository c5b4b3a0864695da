"""Loading a run's config: YAML and ``key=value`` overrides onto the typed sections, validated at load.

The sections themselves (dataclasses with their ``validate``) are in pipelines/config_schema.py,
pipelines/config_training.py and pipelines/config_method.py; this module is the way in and re-exports
them, so ``from pipelines.config import X`` works for every X. Loading rejects, with the dotted key
and the allowed values in the message: unknown keys (a typo must not silently fall back to a
default), wrong types, and out-of-range values. ``key=value`` overrides from the command line go
through the same checks.
"""

from __future__ import annotations

import dataclasses
import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from pipelines.config_checks import ConfigError
from pipelines.config_method import DERIVED_METHOD_ARGS, MASKED_IMAGE_METHODS, METHOD_KEYS, _METHOD_RULES, MethodConfig
from pipelines.config_schema import (
    DEFAULT_FEW_SHOT_TRIES,
    CurateConfig,
    DataConfig,
    EvalConfig,
    PipelineConfig,
    PoolConfig,
    RayConfig,
)
from pipelines.config_training import AugmentConfig, BackboneConfig, DynamicConfig, TrainConfig

__all__ = [
    "DEFAULT_FEW_SHOT_TRIES", "DERIVED_METHOD_ARGS", "MASKED_IMAGE_METHODS", "METHOD_KEYS", "REPLACED_KEYS",
    "_METHOD_RULES", "AugmentConfig", "BackboneConfig", "ConfigError", "CurateConfig", "DataConfig", "DynamicConfig",
    "EvalConfig", "MethodConfig", "PipelineConfig", "PoolConfig", "RayConfig", "TrainConfig",
    "apply_overrides", "config_from_dict", "config_to_dict", "load_config", "load_yaml", "parse_override",
    "read_yaml_file", "set_dotted", "upgrade_stored_config",
]

#: keys that no longer exist, with what to write instead (a plain "unknown key" would not say)
REPLACED_KEYS = {
    "data.eval_source": "evaluation now uses a labelled set of its own, apart from the pool: set "
    "eval.query_source (the labelled held-out queries, what data.eval_source was) and eval.bank_source (the "
    "labelled kNN bank and linear-probe training images, e.g. eval.bank_source=DATA/train "
    "eval.query_source=DATA/test), or neither for label-free metrics only",
}

#: values quoted in errors are cut short: a YAML alias bomb expands to billions of elements
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 6, 6, 80, 80


def _short(value: Any) -> str:
    return _SHORT.repr(value)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0]).removeprefix('an ').removeprefix('a ')}s"
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to ``tp`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) in {type(a) for a in typing.get_args(tp)}:
            return value
        raise ConfigError(f"config key '{key}': got {_short(value)}, must be {_describe(tp)}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}': got {_short(value)}, must be {_describe(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': got {_short(value)}, must be {_describe(tp)}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': got {_short(value)}, must be {_describe(tp)}")
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this loader does not know is a programming error
        raise TypeError(f"unsupported config type {tp!r} at {key}")
    raise ConfigError(f"config key '{key}': got {_short(value)} ({type(value).__name__}), must be {_describe(tp)}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for name in list(data):
        dotted = f"{prefix}.{name}".lstrip(".")
        if dotted in REPLACED_KEYS:
            if data[name] is not None:
                raise ConfigError(f"config key '{dotted}' was replaced: {REPLACED_KEYS[dotted]}")
            data = {k: v for k, v in data.items() if k != name}  # null: nothing was set, nothing is lost
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"'{prefix}'" if prefix else "the top level"
        raise ConfigError(
            f"unknown config key '{(prefix + '.' if prefix else '') + unknown[0]}' in {where}; allowed keys: {', '.join(names)}"
        )
    kwargs = {name: _coerce(data[name], hints[name], f"{prefix}.{name}".lstrip(".")) for name in names if name in data}
    obj = cls(**kwargs)
    obj.validate(prefix)
    return obj


def config_from_dict(data: dict[str, Any]) -> PipelineConfig:
    """Build and validate a PipelineConfig from plain data (e.g. parsed YAML)."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    return _build(PipelineConfig, data, "")


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2's float spellings.

    PyYAML implements YAML 1.1, whose floats need a dot and a signed exponent: ``1e-3``,
    ``1E5``, ``1.0e5`` and ``2e+2`` load as *strings*, so ``train.lr: 1e-3`` would be refused
    as "not a number".  This loader reads every spelling with an exponent as a float too.
    """


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text as every config, sweep file and ``key=value`` override is parsed (safe, YAML 1.2 floats)."""
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.epochs=5`` -> (["train", "epochs"], 5); the value is parsed as YAML (``train.lr=1e-3`` is a float)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.epochs=5)")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    return key.split("."), load_yaml(raw) if raw != "" else ""


def set_dotted(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Set ``a.b.c`` in nested dicts (creating sections), returning ``data``."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{key}': '{part}' is not a section")
    node[parts[-1]] = value
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        set_dotted(data, ".".join(path), value)
    return data


def read_yaml_file(path: str | Path, what: str, example: str) -> Any:
    """Parse a YAML file; a missing file or bad YAML is a ConfigError naming the file and the fix."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} file not found: {p} (pass a YAML file, e.g. {example})")
    try:
        return load_yaml(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} file {p} is not valid YAML: {exc}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a YAML config (or the defaults when ``path`` is None) plus overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        loaded = read_yaml_file(p, "config", "configs/demo.yaml")
        if loaded is not None:
            if not isinstance(loaded, dict):
                raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(loaded).__name__}")
            data = loaded
    return config_from_dict(apply_overrides(data, overrides or []))


def upgrade_stored_config(data: dict[str, Any]) -> dict[str, Any]:
    """A config stored by an earlier sslpipe (inside a checkpoint) in today's keys, so old checkpoints
    still evaluate and export. ``data.eval_source`` held the queries, and the kNN bank was the labelled
    pool: they become ``eval.query_source`` and ``eval.bank_source = data.source``."""
    import copy

    if not isinstance(data, dict):
        return data  # config_from_dict says what is wrong with it
    out = copy.deepcopy(data)
    section = out.get("data")
    if isinstance(section, dict) and "eval_source" in section:
        queries = section.pop("eval_source")
        ev = out.setdefault("eval", {})
        if queries is not None and isinstance(ev, dict) and ev.get("query_source") is None:
            ev["query_source"], ev["bank_source"] = queries, section.get("source")
    return out


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
