"""Turning a run configuration into data, a model, a run folder."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch.nn as nn

from prunelab import io, models
from prunelab.data import DataBundle, build_data
from prunelab.errors import ConfigError, CorruptFileError

BUILTIN = "builtin:"
CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "checkpoints"


def say(config: dict[str, Any], text: str) -> None:
    """A stage line for people, on stderr, unless the run is quiet."""
    if not config.get("quiet"):
        print(f"[prunelab] {text}", file=sys.stderr, flush=True)


def checkpoint_path(spec: str) -> Path:
    """A checkpoint path, or `builtin:NAME` for one shipped with prunelab."""
    if spec.startswith(BUILTIN):
        path = CHECKPOINT_DIR / f"{spec[len(BUILTIN) :]}.pt"
        if not path.is_file():
            known = sorted(p.stem for p in CHECKPOINT_DIR.glob("*.pt"))
            raise CorruptFileError(f"no built-in checkpoint {spec!r}; built-in: {known}")
        return path
    return Path(spec)


def make_data(config: dict[str, Any]) -> DataBundle:
    options = dict(config.get("data") or {})
    name = options.pop("name", None)
    if not name:
        raise ConfigError("config data.name is missing (e.g. data.name=cifar10_jpg)")
    options.setdefault("seed", config.get("seed", 0))
    return build_data(name, **options)


def make_model(config: dict[str, Any], data: DataBundle) -> nn.Module:
    """The starting model: the checkpoint if given, else a fresh zoo model."""
    spec = config.get("checkpoint")
    if spec:
        model = io.load(checkpoint_path(str(spec)))
        name = getattr(model, "prunelab_arch", {}).get("name")
        if config.get("model") and name and name != config["model"]:
            say(config, f"checkpoint holds {name}; ignoring model={config['model']}")
        config["model"] = name or config.get("model")
    else:
        if not config.get("model"):
            raise ConfigError("config model is missing (e.g. model=resnet20)")
        model = models.create(config["model"], num_classes=data.num_classes,
                              **(config.get("model_args") or {}))
    classes = _num_outputs(model)
    if classes is not None and classes != data.num_classes:
        raise ConfigError(
            f"the model predicts {classes} classes but data {data.name!r} has {data.num_classes}"
        )
    apply_resolution(model, data)
    return model


def apply_resolution(model: nn.Module, data: DataBundle) -> None:
    """Feed the model the input resolution it records (a resolution-pruned model)."""
    size = getattr(model, "prunelab_input_size", None)
    if size is None or len(size) != 3:  # not an image model: nothing to resize
        return
    if tuple(size[1:]) != tuple(data.effective_input_size[1:]):
        if size[1] != size[2]:
            raise ConfigError(f"non-square recorded input size {tuple(size)}")
        if tuple(size[1:]) == tuple(data.input_size[1:]):
            data.set_resolution(None)
        else:
            data.set_resolution(int(size[1]))


def _num_outputs(model: nn.Module) -> int | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def run_dir(config: dict[str, Any], command: str) -> Path:
    if config.get("run_dir"):
        return Path(config["run_dir"])
    method = (config.get("method") or {}).get("name")
    parts = [command, method, config.get("model") or "model", time.strftime("%Y%m%d-%H%M%S")]
    return Path("runs") / "-".join(p for p in parts if p)
