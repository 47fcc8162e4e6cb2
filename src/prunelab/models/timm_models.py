"""timm's models, as ``timm/NAME`` (the optional `timm` extra).

timm is imported only when a ``timm/`` name is used; without it, the one error
is a MissingDependencyError naming the extra. Models are built with
``pretrained=False``: prunelab never downloads weights. `CHECKED` lists the
models the coverage test and ``bench/model_coverage.py --timm`` hold to the
engine's contracts, one or two of each family users train.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch.nn as nn

from prunelab.errors import MissingDependencyError
from prunelab.optional import require

PREFIX = "timm/"
DEFAULT_INPUT_SIZE: tuple[int, int, int] = (3, 224, 224)



@dataclass(frozen=True)
class TimmCase:
    """One timm model and the (small) input the coverage check feeds it."""

    name: str
    image_size: int = 64
    kwargs: dict[str, Any] = field(default_factory=dict)


# The models of issue 21's list, in its order. ConvNeXt's layer scale starts at 1e-6,
# which would hide a wrongly pruned block (its output barely reaches the logits): it is
# built at 1. A ViT is built for a 4x4 grid of patches.
CASES: tuple[TimmCase, ...] = (
    *(TimmCase(n) for n in (
        "resnet50", "efficientnet_b0", "mobilenetv3_large_100", "regnetx_002", "cspresnet50",
        "ghostnet_100", "rexnet_100",
    )),
    TimmCase("convnext_nano", 64, {"ls_init_value": 1.0}),
    *(TimmCase(n) for n in ("resnest14d", "dla34", "hrnet_w18_small")),
    TimmCase("vit_tiny_patch16_224", 64, {"img_size": 64}),
)  # fmt: skip
CHECKED: tuple[str, ...] = tuple(c.name for c in CASES)


def is_timm_name(name: str) -> bool:
    return name.startswith(PREFIX)


def installed() -> bool:
    """True if timm can be imported."""
    try:
        _timm()
    except MissingDependencyError:
        return False
    return True


def _timm() -> ModuleType:
    return require("timm", "a timm/ model")


def _base(name: str) -> str:
    return name[len(PREFIX) :]


def exists(name: str) -> bool:
    """True if timm builds ``timm/NAME`` (a pretrained tag such as ``.a1_in1k`` is fine)."""
    return bool(_timm().is_model(_base(name)))


def names() -> list[str]:
    """Every timm architecture, prefixed."""
    return [PREFIX + n for n in _timm().list_models()]


def close_names(name: str) -> list[str]:
    """The timm names nearest to a misspelt one, for the error message."""
    found = difflib.get_close_matches(_base(name), _timm().list_models(), n=8, cutoff=0.6)
    return [PREFIX + n for n in found]


def input_size(name: str) -> tuple[int, int, int]:
    """(C, H, W) from timm's configuration of the model (no download)."""
    cfg = _timm().get_pretrained_cfg(_base(name))
    size = getattr(cfg, "input_size", None)
    return tuple(size) if size else DEFAULT_INPUT_SIZE  # type: ignore[return-value]


def create_timm(name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    """Build ``timm/NAME`` from scratch; `kwargs` go to ``timm.create_model``."""
    return _timm().create_model(_base(name), pretrained=False, num_classes=num_classes, **kwargs)


def version() -> str:
    return str(_timm().__version__)
