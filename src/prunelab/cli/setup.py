"""Turning a run configuration into a method, data, a model, a run folder.

Everything a run needs from its configuration is checked (`check_inputs`,
`make_method`, `train_config`) before any data is decoded or any file is
written, so bad input is one error and leaves nothing behind.
"""

from __future__ import annotations

import os
import sys
import time
import typing
from pathlib import Path
from typing import Any

import torch.nn as nn

from prunelab import io, models
from prunelab.cli.config import check_config, typed
from prunelab.criteria import list_criteria
from prunelab.data import DataBundle, build_data
from prunelab.data.registry import common_data_options, data_options
from prunelab.errors import ConfigError, CorruptFileError, UnknownNameError
from prunelab.methods import Method, get_method
from prunelab.train import TrainConfig

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


def check_inputs(config: dict[str, Any]) -> None:
    """Top-level values, the data set and its options, the model or checkpoint files."""
    check_config(config)
    check_data(config)
    for key in ("checkpoint", "reference"):
        if config.get(key):
            path = checkpoint_path(str(config[key]))
            if not path.exists():
                raise CorruptFileError(f"no model file at {path} ({key}={config[key]})")
    if not config.get("checkpoint"):
        name = config.get("model")
        if not name:
            raise ConfigError("config model is missing (e.g. model=resnet20)")
        models.check_name(name)


def check_data(config: dict[str, Any]) -> None:
    """The data set name and its options, types coerced in place (no data is read)."""
    options = dict(config.get("data") or {})
    name = options.pop("name", None)
    if not name:
        raise ConfigError("config data.name is missing (e.g. data.name=cifar10_jpg)")
    if not isinstance(name, str):
        raise ConfigError(f"data.name={name!r} must be a data set name")
    own = data_options(name)
    common = common_data_options()
    unknown = sorted(set(options) - set(own) - set(common))
    if unknown:
        raise ConfigError(f"data set {name!r} has no option(s) {unknown}; its options: "
                          f"{sorted(own)}; common options: {sorted(common)}")  # fmt: skip
    config["data"] = {"name": name, **typed(options, {**common, **own}, "data")}


def make_method(config: dict[str, Any]) -> tuple[str, Method]:
    """The configured method with its options checked by name and type."""
    options = dict(config.get("method") or {})
    name = options.pop("name", None)
    if not name:
        raise ConfigError("config method.name is missing (see `prunelab methods`)")
    if not isinstance(name, str):
        raise ConfigError(f"method.name={name!r} must be a method name (see `prunelab methods`)")
    cls = get_method(name)
    options = typed(options, typing.get_type_hints(cls.Options), "method")
    for key, value in options.items():
        if (key == "criterion" or key.endswith("_criterion")) and value not in list_criteria():
            raise UnknownNameError("criterion", str(value), list_criteria())
    return name, cls(**options)


def train_config(
    config: dict[str, Any], defaults: dict[str, Any], forced: dict[str, Any] | None = None
) -> TrainConfig:
    """`defaults`, then the `train:` section (types checked), then `forced`, as a TrainConfig."""
    hints = typing.get_type_hints(TrainConfig)
    section = typed(dict(config.get("train") or {}), hints, "train")
    return TrainConfig.from_dict({**defaults, **section, **(forced or {})})


def check_writable(folder: Path, flag: str = "--run-dir") -> None:
    """Refuse a folder that cannot be created or written, before anything is written."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    where = existing.resolve()
    if not existing.is_dir():
        raise ConfigError(f"cannot make the folder {folder}: {where} is a file, not a folder "
                          f"(choose another with {flag})")  # fmt: skip
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write the folder {folder}: {where} is not writable "
                          f"(choose another with {flag})")  # fmt: skip


def make_data(config: dict[str, Any]) -> DataBundle:
    check_data(config)
    options = dict(config["data"])
    name = options.pop("name")
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
        what = "the model file records"
    else:
        if not config.get("model"):
            raise ConfigError("config model is missing (e.g. model=resnet20)")
        args = dict(config.get("model_args") or {})
        if models.detection_task(config["model"]) and "image_size" not in args:
            args["image_size"] = data.input_size[1]  # the detector resizes to the data's size
        model = models.create(config["model"], num_classes=data.num_classes, **args)
        what = f"{config['model']}'s zoo default is"
    classes = _check_task(model, data)
    if classes is not None and classes != data.num_classes:
        raise ConfigError(
            f"the model predicts {classes} classes but data {data.name!r} has {data.num_classes}"
        )
    apply_resolution(model, data, config, what)
    return model


def apply_resolution(
    model: nn.Module,
    data: DataBundle,
    config: dict[str, Any] | None = None,
    what: str = "the model records",
) -> None:
    """Run the model at the data's size, or at the resolution a method chose for it.

    A resolution-pruned model (`prunelab_resolution`, set by the method) resizes
    every batch to its resolution. Any other recorded size (the zoo default, the
    size a model was trained at) is not imposed on the data: the model runs at
    the data's size, with a notice when the two differ, and records that size.
    """
    config = config if config is not None else {}
    size = getattr(model, "prunelab_input_size", None)
    if size is not None and len(size) != 3:  # not an image model: nothing to resize
        return
    if size is not None and size[0] != data.input_size[0]:
        raise ConfigError(f"the model takes {size[0]}-channel images but data {data.name!r} has "
                          f"{data.input_size[0]} channel(s)")  # fmt: skip
    chosen = getattr(model, "prunelab_resolution", None)
    if chosen is not None:
        asked = (config.get("data") or {}).get("resolution")
        if asked is not None and int(asked) != int(chosen):
            raise ConfigError(
                f"the model was pruned to {chosen}x{chosen} inputs by its method; "
                f"data.resolution={asked} contradicts it (drop data.resolution)"
            )
        data.set_resolution(int(chosen))
        return
    actual = tuple(data.effective_input_size)
    if size is not None and tuple(size) != actual:
        side = size[1]
        say(config, f"{what} {_shape(size)} inputs; running at the data's {_shape(actual)} "
                    f"(data.resolution={side} resizes the images to {side}x{side})")  # fmt: skip
    if size is not None:
        model.prunelab_input_size = actual


def _shape(size: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in size)


def _check_task(model: nn.Module, data: DataBundle) -> int | None:
    """A detector needs data of its task; returns the classes the model predicts."""
    arch = getattr(model, "prunelab_arch", None) or {}
    kind = models.detection_task(arch.get("name", ""))
    wants = getattr(data, "task", "classification")
    if kind is None and wants not in ("detection", "instance_segmentation"):
        return _num_outputs(model)
    if kind != wants:
        raise ConfigError(f"model {arch.get('name') or type(model).__name__} trains on "
                          f"{kind or 'classification'} data but data {data.name!r} is a "
                          f"{wants} data set")
    return arch.get("kwargs", {}).get("num_classes")


def _num_outputs(model: nn.Module) -> int | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def run_dir(config: dict[str, Any], command: str) -> Path:
    if config.get("run_dir"):
        return Path(config["run_dir"])
    method = (config.get("method") or {}).get("name")
    parts = [command, method, config.get("model") or "model", time.strftime("%Y%m%d-%H%M%S")]
    return Path("runs") / "-".join(p for p in parts if p)
