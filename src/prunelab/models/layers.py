"""Small pieces every zoo model shares: weight initialisation and conv shorthands.

Zoo models use separate, non-inplace ReLU modules at every call site: a
forward hook on a BatchNorm (activation statistics, masks) then sees the
tensor it was given, not one rewritten in place by the next ReLU, and every
node of a traced graph has its own module.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["conv1x1", "conv3x3", "init_weights"]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BatchNorm always follows)."""
    return nn.Conv2d(
        in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False
    )


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias (a BatchNorm always follows)."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan-out, ReLU) convolutions, BatchNorm weight 1 and bias 0.

    Linear layers keep PyTorch's default initialisation.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def reinitialise(model: nn.Module, seed: int) -> nn.Module:
    """Fresh weights for a (pruned) model, as training from scratch starts.

    Each layer's own `reset_parameters` (which also clears BN statistics),
    then the zoo's initialisation (Kaiming fan-out convolutions, BN 1 and 0);
    `seed` makes it repeatable without touching the global random state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
        init_weights(model)
    return model
