"""Cost of a model: FLOPs (counted as multiply-accumulates, MACs) and parameters.

Convention, the one the pruning papers use (ResNet-56 on CIFAR: 125.5 M,
ResNet-50 at 224x224: 4.1 G): "FLOPs" are the multiply-accumulates of
convolution and linear layers for one image. BatchNorm, activations,
pooling, residual additions, concatenations and biases are not counted;
they are a small share and every paper leaves them out.

Counting uses forward hooks on modules (``nn.Conv1d/2d/3d``, transposed
convolutions, ``nn.Linear`` and subclasses) during one eval-mode, no-grad
forward pass. Attention layers compute with their weights functionally, so
they are counted as a whole (`prunelab.metrics.attention_cost`): their
projections and their two matmuls (queries x keys, weights x values). Other
functional calls made outside modules (``F.conv2d``, ``F.linear``, a bare
``torch.matmul``) are not seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.modules.conv import _ConvNd

from prunelab.metrics.attention_cost import attention_macs, counts_attention

__all__ = ["Cost", "CostRatio", "count", "format_count"]


def format_count(value: float, suffix: str = "") -> str:
    """Human form of a count: 41.2 M, 4.11 G, 850 K."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            scaled = value / scale
            digits = 2 if abs(scaled) < 10 else 1
            return f"{scaled:.{digits}f} {unit}{suffix}"
    return f"{value:.0f} {suffix}".rstrip()


@dataclass(frozen=True)
class CostRatio:
    """A cost as a fraction of a baseline cost (0.48 = 48 % of the baseline FLOPs)."""

    flops: float
    params: float

    def __str__(self) -> str:
        return f"{self.flops:.3f}x FLOPs, {self.params:.3f}x params"


@dataclass(frozen=True)
class Cost:
    """FLOPs (MACs of conv and linear layers, per image) and parameter count of a model.

    `by_module` maps each counted module's qualified name to its MACs per
    image, for planners that need to know where the cost sits.
    """

    flops: int
    params: int
    by_module: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    @property
    def macs(self) -> int:
        """The same number as `flops`: what is counted is multiply-accumulates."""
        return self.flops

    def ratio(self, baseline: Cost) -> CostRatio:
        """This cost as a fraction of `baseline` (e.g. a pruned model vs the dense one)."""
        return CostRatio(
            flops=self.flops / baseline.flops if baseline.flops else math.nan,
            params=self.params / baseline.params if baseline.params else math.nan,
        )

    def __str__(self) -> str:
        millions = self.params / 1e6
        params = f"{millions:.2f} M" if millions < 10 else f"{millions:.1f} M"
        return f"{format_count(self.flops, 'FLOPs')} (MACs), {params} params"


def _conv_macs(module: _ConvNd, inputs: tuple, output: torch.Tensor) -> int:
    kernel = math.prod(module.kernel_size)
    if module.transposed:
        # Every input element is multiplied into out/groups channels of a k-sized patch.
        x = inputs[0]
        return x.numel() * (module.out_channels // module.groups) * kernel
    # Every output element sums in/groups channels of a k-sized window.
    return output.numel() * (module.in_channels // module.groups) * kernel


def _linear_macs(module: nn.Linear, inputs: tuple, output: torch.Tensor) -> int:
    return output.numel() * module.in_features


def _batch_size(example_input: torch.Tensor | Sequence[torch.Tensor]) -> int:
    first = example_input if isinstance(example_input, torch.Tensor) else example_input[0]
    if not isinstance(first, torch.Tensor) or first.dim() == 0:
        raise TypeError("example_input must be a batched tensor (or a sequence whose first is)")
    return int(first.shape[0])


def count(model: nn.Module, example_input: torch.Tensor | Sequence[torch.Tensor]) -> Cost:
    """Count FLOPs (MACs per image) and parameters of `model` on `example_input`.

    The input's first dimension is the batch; the result is per image, so
    any batch size gives the same answer. The model runs once in eval mode
    without gradients; each submodule's train/eval mode is restored after.
    A tuple or list input is passed as positional arguments.
    """
    batch = _batch_size(example_input)
    names = {module: name for name, module in model.named_modules(remove_duplicate=False)}
    totals: dict[str, int] = {}

    def add(module: nn.Module, macs: int) -> None:
        name = names.get(module, type(module).__name__)
        totals[name] = totals.get(name, 0) + macs

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, _ConvNd):
            add(module, _conv_macs(module, inputs, output))
        else:
            add(module, _linear_macs(module, inputs, output))

    def attention_hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        add(module, attention_macs(module, args, kwargs))

    handles = [
        module.register_forward_hook(hook)
        for module in model.modules()
        if isinstance(module, _ConvNd | nn.Linear)
    ]
    handles += [
        module.register_forward_hook(attention_hook, with_kwargs=True)
        for module in model.modules()
        if counts_attention(module)
    ]
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            if isinstance(example_input, torch.Tensor):
                model(example_input)
            else:
                model(*example_input)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training

    by_module = {name: macs // batch for name, macs in totals.items()}
    flops = sum(totals.values()) // batch
    params = sum(p.numel() for p in model.parameters())
    return Cost(flops=flops, params=params, by_module=by_module)
