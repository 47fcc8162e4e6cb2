"""Run configurations: YAML files plus `key.sub=value` overrides, checked by name.

A configuration is a nested dict with these top-level keys:

    model: resnet20              # zoo name (prunelab models)
    checkpoint: path or null     # a prunelab.save file to start from
    reinit: false                # `prunelab train`: fresh weights for the checkpoint's
                                 # (pruned) architecture, i.e. train it from scratch
    reference: path or null      # a trained dense model to compare with when training from scratch
    data: {name: cifar10_jpg, batch_size: 128, holdout: 0, ...}   # build_data arguments
    method: {name: random, <option>: value, ...}                  # prunelab methods
    target: 0.5                  # cost to reach, as a fraction of the dense model
    metric: flops                # flops (MACs), params or latency (measured, see `latency`)
    train: {epochs: ..., lr: ...}                                 # TrainConfig fields
    average: {decay: 0.999, start_epoch: 0}   # `prunelab train`: keep and save a weight
                                 # average (EMA; decay null = uniform/SWA), or null for none
    latency: {batch: 8, threads: 2, repeats: 20}
    seed: 0
    run_dir: null                # default runs/<command>-<method>-<model>-<time>
    quiet: false
"""

from __future__ import annotations

import copy
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from prunelab.errors import ConfigError

TOP_LEVEL = {
    "model", "checkpoint", "reference", "data", "method", "target", "metric", "train", "latency",
    "seed", "run_dir", "quiet", "name", "average", "model_args", "reinit",
}  # fmt: skip

LATENCY = {"batch": 8, "threads": 2, "repeats": 20}  # `latency:` options and their defaults

# The offline default of `prunelab prune` (and `make demo`): the arm the post-training
# leaderboard (configs/compare/posttrain_resnet20_cifar10.yaml, bench/RESULTS.md) ranks first,
# where a lead under 0.5 counts only with two seeds and a two-seed tie under 0.5 goes to the
# arm of least wall time (uniform + kd; the figures are in bench/RESULTS.md), on a quick preset:
# the committed CIFAR-10 (JPEG) ResNet-20, uniform L1 to half its FLOPs, 2 epochs of
# fine-tuning. `make demo` adds the winner's distillation from the dense model (DEMO_DISTILL in
# the Makefile; not a default here, so that `prunelab prune method=chex checkpoint=null` needs
# no teacher), about 3 minutes on 2 cores.
# Update both when the leaderboard's first rank changes.
DEMO: dict[str, Any] = {
    "name": "demo",
    "model": "resnet20",
    "checkpoint": "builtin:resnet20_cifar10_jpg",
    "data": {"name": "cifar10_jpg", "batch_size": 128, "holdout": 2000},
    "method": {"name": "uniform", "criterion": "l1", "round_to": 8},
    "target": 0.5,
    "metric": "flops",
    "train": {
        "epochs": 2, "lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
        "schedule": "cosine", "warmup_epochs": 0.1, "channels_last": "best",
    },
    "latency": {"batch": 8, "threads": 2, "repeats": 20},
    "seed": 0,
    "quiet": False,
}  # fmt: skip

TRAIN_DEFAULTS: dict[str, Any] = {
    "model": "resnet20",
    "checkpoint": None,
    "data": {"name": "cifar10_jpg", "batch_size": 128},
    "train": {"epochs": 30, "lr": 0.1, "nesterov": True, "weight_decay": 5e-4,
              "schedule": "cosine", "warmup_epochs": 1, "channels_last": "on"},
    "latency": {"batch": 8, "threads": 2, "repeats": 20},
    "seed": 0,
    "quiet": False,
}  # fmt: skip


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no config file at {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping of settings, not {type(data).__name__}")
    return data


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: nested dicts merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> dict[str, Any]:
    """`train.epochs=3` -> {"train": {"epochs": 3}} (values parsed as YAML scalars)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.epochs=3)")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        value = raw
    node: dict[str, Any] = {}
    out = node
    parts = key.split(".")
    for part in parts[:-1]:
        node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return out


def build_config(
    defaults: dict[str, Any], files: list[str], overrides: list[str]
) -> dict[str, Any]:
    """Defaults, then each YAML file, then the overrides, validated at the top level.

    Each file, and all overrides together, form one layer. A layer that names
    another method (`method=chex`, `method.name=chex`, `method: {name: chex}`)
    starts that method from its own defaults: only the options given in the
    same layer apply, whatever their order on the command line.
    """
    config = _method_as_mapping(copy.deepcopy(defaults))
    layers = [_method_as_mapping(load_yaml(f)) for f in files]
    cli: dict[str, Any] = {}
    for o in overrides:
        cli = merge(cli, _method_as_mapping(parse_override(o)))
    for layer in [*layers, cli]:
        config = _merge_layer(config, layer)
    unknown = sorted(set(config) - TOP_LEVEL)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; known: {sorted(TOP_LEVEL)}")
    for section in ("data", "train", "latency", "average", "model_args"):
        if not isinstance(config.get(section) or {}, dict):
            raise ConfigError(f"config {section!r} must be a mapping")
    return config


def _merge_layer(config: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    method, new = config.get("method"), layer.get("method")
    switched = (
        isinstance(method, dict) and isinstance(new, dict)
        and new.get("name") not in (None, method.get("name"))
    )  # fmt: skip
    out = merge(config, layer)
    if switched:
        out["method"] = copy.deepcopy(new)
    return out


def _method_as_mapping(config: dict[str, Any]) -> dict[str, Any]:
    if isinstance(config.get("method"), str):
        config["method"] = {"name": config["method"]}
    return config


def check_config(config: dict[str, Any]) -> None:
    """Types and ranges of the top-level values and `latency` (sections check their own)."""
    for key in ("model", "checkpoint", "reference", "run_dir", "name"):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise ConfigError(f"{key}={config[key]!r} must be a name or a path")
    if "target" in config:
        target = config["target"]
        if not _fits(target, float) or not 0 < target <= 1:
            raise ConfigError(f"target={target!r} must be a number in (0, 1], the fraction of "
                              "the dense model's cost to keep (e.g. target=0.5)")
    if config.get("metric", "flops") not in ("flops", "params", "latency"):
        raise ConfigError(
            f"metric must be 'flops', 'params' or 'latency', got {config['metric']!r}"
        )
    seed = config.get("seed", 0)
    if not _fits(seed, int) or not 0 <= seed < 2**63:
        raise ConfigError(f"seed={seed!r} must be a whole number >= 0")
    for key in ("quiet", "reinit"):
        if not isinstance(config.get(key, False), bool):
            raise ConfigError(f"{key}={config[key]!r} must be true or false")
    if not isinstance(config.get("method") or {}, dict):
        raise ConfigError("config 'method' must be a method name or a mapping with a name")
    from prunelab.latency_table import LatencySpec  # keys, types and ranges of `latency:`

    LatencySpec.from_config({**LATENCY, **(config.get("latency") or {})})


def typed(values: dict[str, Any], hints: dict[str, Any], where: str) -> dict[str, Any]:
    """`values` checked against type hints (unknown keys are left to the consumer).

    A string that reads as a number is taken as one where a float is expected
    (YAML reads `1e-3` as a string).
    """
    out = dict(values)
    for key, value in values.items():
        hint = hints.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}.{key}={value!r} must be a finite number")
        if hint is None or _fits(value, hint):
            continue
        if isinstance(value, str) and _fits(0.5, hint):
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if math.isfinite(number):
                out[key] = number
                continue
        raise ConfigError(f"{where}.{key}={value!r} must be {_describe(hint)}")
    return out


def _fits(value: Any, hint: Any) -> bool:
    """Whether a YAML value can stand for `hint` (int for float, list for tuple)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in args)
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_fits, value, args))
        return not args or all(_fits(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(origin or hint, type):
        return isinstance(value, origin or hint)
    return True  # a hint this check does not model (Literal, ...): the consumer checks


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
             type(None): "null", dict: "a mapping"}  # fmt: skip
    if hint in names:
        return names[hint]
    if typing.get_origin(hint) in (tuple, list):
        return "a list [...]"
    return getattr(hint, "__name__", str(hint))


def dump(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False)
