"""One registry for every model prunelab can build, ours and torchvision's.

Our own CIFAR models register themselves with `@register_model` on a plain
builder function (the timm pattern): the decorator records the builder and
the model's natural input size and class count, nothing else. Any
torchvision classification model is available under its torchvision name,
and so is every torchvision detection model (SSD, SSD-lite, RetinaNet, FCOS,
Faster/Mask R-CNN, built with `weights_backbone=None`; and Mask R-CNN on
ResNet-18/34-FPN, `models.rcnn_variants`); `image_size=S` makes its transform
resize every image to S x S, and travels in the recipe).
A name that exists in torchvision always means the torchvision model, so our
CIFAR variants of colliding names carry a ``cifar_`` prefix. ``timm/NAME`` is
timm's model NAME (the optional `timm` extra, `prunelab.models.timm_models`).

`create` stamps the recipe on the model (``prunelab_arch``) so a pruned model
saved to disk can be rebuilt from its file alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

import torch.nn as nn
import torchvision

from prunelab.errors import ConfigError, UnknownNameError
from prunelab.models import rcnn_variants, timm_models

__all__ = [
    "check_name",
    "create",
    "create_from_arch",
    "default_input_size",
    "default_num_classes",
    "is_registered",
    "list_models",
    "register_model",
]

TORCHVISION_INPUT_SIZE: tuple[int, int, int] = (3, 224, 224)
TORCHVISION_NUM_CLASSES = 1000

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int, int]
    num_classes: int


_REGISTRY: dict[str, _Entry] = {}


@cache
def _torchvision_names() -> frozenset[str]:
    """Classification and detection models of torchvision (not segmentation, video, ...)."""
    return frozenset(torchvision.models.list_models(module=torchvision.models)) | _detection_names()


@cache
def _detection_names() -> frozenset[str]:
    """torchvision's detectors and the smaller-backbone Mask R-CNNs built from its parts."""
    tv = torchvision.models.list_models(module=torchvision.models.detection)
    return frozenset(tv) | frozenset(rcnn_variants.BUILDERS)


def detection_task(name: str) -> str | None:
    """The data task a model trains on: "detection", "instance_segmentation" or None."""
    if name not in _detection_names():
        return None
    if name.startswith("keypointrcnn"):
        return "keypoints"
    return "instance_segmentation" if name.startswith("maskrcnn") else "detection"


def _detection_input_size(name: str) -> tuple[int, int, int]:
    side = 320 if name.startswith("ssdlite") else 300 if name.startswith("ssd") else 800
    return (3, side, side)


def register_model(
    name: str,
    input_size: tuple[int, int, int] = (3, 32, 32),
    num_classes: int = 10,
) -> Callable[[Builder], Builder]:
    """Register a builder ``fn(num_classes=..., **kwargs) -> nn.Module`` under `name`.

    Refuses names already taken, by us or by torchvision, so that a name
    always means exactly one architecture.
    """

    def decorator(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        if name in _torchvision_names():
            raise ValueError(
                f"model {name!r} exists in torchvision; give the variant a 'cifar_' prefix"
            )
        _REGISTRY[name] = _Entry(fn, tuple(input_size), int(num_classes))
        return fn

    return decorator


def is_registered(name: str) -> bool:
    """True if `create(name)` can build the model (ours, torchvision's or timm's)."""
    if timm_models.is_timm_name(name):
        return timm_models.exists(name)  # without timm: MissingDependencyError
    return name in _REGISTRY or name in _torchvision_names()


def list_models() -> list[str]:
    """All model names, ours and torchvision's classification models, sorted."""
    return sorted(set(_REGISTRY) | _torchvision_names())


def check_name(name: str) -> None:
    """Raise UnknownNameError (with the nearest names) unless `create(name)` can build it."""
    if not is_registered(name):
        timm = timm_models.is_timm_name(name)
        known = timm_models.close_names(name) if timm else list_models()
        raise UnknownNameError("model", name, known)


def default_input_size(name: str) -> tuple[int, int, int]:
    """(C, H, W) the model is meant for: (3, 32, 32) for CIFAR, (3, 224, 224) torchvision."""
    check_name(name)
    if name in _REGISTRY:
        return _REGISTRY[name].input_size
    if timm_models.is_timm_name(name):
        return timm_models.input_size(name)
    if name in _detection_names():
        return _detection_input_size(name)
    return TORCHVISION_INPUT_SIZE


def default_num_classes(name: str) -> int:
    """Class count used when `create` gets none: 10 for CIFAR models, 1000 for the others."""
    check_name(name)
    if name in _REGISTRY:
        return _REGISTRY[name].num_classes
    if name in _detection_names():
        return 91  # COCO's category ids 1-90 plus the background
    return TORCHVISION_NUM_CLASSES


def create(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build model `name` with freshly initialised weights.

    Extra keyword arguments go to the builder (for torchvision models, to
    ``torchvision.models.get_model``). Pretrained weights are never
    downloaded: asking for them is a `ConfigError`. The returned model
    carries ``prunelab_arch = {"name": ..., "kwargs": {...}}`` and
    ``prunelab_input_size = (C, H, W)`` so it can be rebuilt later with
    `create_from_arch`.
    """
    check_name(name)
    for key in ("weights", "pretrained", "weights_backbone"):
        if kwargs.get(key) not in (None, False):
            raise ConfigError(
                f"{key}={kwargs[key]!r}: prunelab never downloads pretrained weights; "
                "load a checkpoint into the created model instead"
            )
        kwargs.pop(key, None)
    if num_classes is None:
        num_classes = default_num_classes(name)
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}")

    if name in _REGISTRY:
        model = _REGISTRY[name].builder(num_classes=num_classes, **kwargs)
    elif timm_models.is_timm_name(name):
        model = timm_models.create_timm(name, num_classes, kwargs)
    else:
        model = _create_torchvision(name, num_classes, kwargs)

    model.prunelab_arch = {"name": name, "kwargs": {"num_classes": num_classes, **kwargs}}
    size = kwargs.get("image_size") if name in _detection_names() else None
    model.prunelab_input_size = (3, size, size) if size else default_input_size(name)
    return model


def create_from_arch(arch: dict[str, Any]) -> nn.Module:
    """Rebuild an (unpruned) model from a ``prunelab_arch`` dict written by `create`."""
    try:
        name = arch["name"]
        kwargs = dict(arch.get("kwargs", {}))
    except (TypeError, KeyError) as exc:
        raise ConfigError(f"not a prunelab model recipe: {arch!r}") from exc
    return create(name, **kwargs)


def _create_torchvision(name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    build_kwargs = dict(kwargs)
    if name in _detection_names():
        return _create_detection(name, num_classes, build_kwargs)
    if name in ("googlenet", "inception_v3"):
        # Without pretrained weights these warn unless told to initialise;
        # we always want the initialisation.
        build_kwargs.setdefault("init_weights", True)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **build_kwargs)


def _create_detection(name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    """A torchvision detector from scratch; `image_size` fixes its transform's resize."""
    size = kwargs.pop("image_size", None)
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 32):
        raise ConfigError(f"image_size={size!r} must be a whole number of pixels >= 32")
    if name in rcnn_variants.BUILDERS:
        model = rcnn_variants.BUILDERS[name](num_classes=num_classes, **kwargs)
    else:
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None,
                                             num_classes=num_classes, **kwargs)
    if size is not None:
        transform = model.transform
        transform.min_size, transform.max_size = (size,), size
        if transform.fixed_size is not None:  # SSD resizes to a fixed (h, w)
            transform.fixed_size = (size, size)
    return model
