"""Run configurations: YAML files plus `key.sub=value` overrides, checked by name.

A configuration is a nested dict with these top-level keys:

    model: resnet20              # zoo name (prunelab models)
    checkpoint: path or null     # a prunelab.save file to start from
    reference: path or null      # a trained dense model to compare with when training from scratch
    data: {name: cifar10_jpg, batch_size: 128, holdout: 0, ...}   # build_data arguments
    method: {name: random, <option>: value, ...}                  # prunelab methods
    target: 0.5                  # cost to reach, as a fraction of the dense model
    metric: flops                # flops (MACs) or params
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
from pathlib import Path
from typing import Any

import yaml

from prunelab.errors import ConfigError

TOP_LEVEL = {
    "model", "checkpoint", "reference", "data", "method", "target", "metric", "train", "latency",
    "seed", "run_dir", "quiet", "name", "average", "model_args",
}  # fmt: skip

# The offline default of `prunelab prune` (and `make demo`): the committed
# CIFAR-10 (JPEG) ResNet-20, pruned to half its FLOPs by the random search
# with a quick scoring and fine-tuning budget (about 5 minutes on 2 cores).
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
    """Defaults, then each YAML file, then each override, validated at the top level."""
    config = _method_as_mapping(copy.deepcopy(defaults))
    # `method=random` names a new method (its own defaults); `method.x=...` then sets options
    for f in files:
        config = _method_as_mapping(merge(config, load_yaml(f)))
    for o in overrides:
        config = _method_as_mapping(merge(config, parse_override(o)))
    unknown = sorted(set(config) - TOP_LEVEL)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; known: {sorted(TOP_LEVEL)}")
    for section in ("data", "train", "latency", "average", "model_args"):
        if not isinstance(config.get(section) or {}, dict):
            raise ConfigError(f"config {section!r} must be a mapping")
    return config


def _method_as_mapping(config: dict[str, Any]) -> dict[str, Any]:
    if isinstance(config.get("method"), str):
        config["method"] = {"name": config["method"]}
    return config


def dump(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False)
