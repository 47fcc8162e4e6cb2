"""Deployment transforms of a (pruned) model: batch norms folded into the convolutions.

At inference a batch norm after a convolution is an affine map per channel, so
it can be folded into that convolution's weights and bias. What remains of a
pruned network's time then scales more closely with its FLOPs: the batch
norm's pass over the activations, which shrinks only with the channel count,
is gone.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
import torch.fx as fx
import torch.nn as nn

from prunelab.errors import UnsupportedModelError


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every conv -> BN pair folded into the conv.

    A pair is folded when the BN reads only that convolution's output, the
    convolution feeds nothing else and each module is called once; other batch
    norms stay. The copy computes what the eval-mode model computes (up to
    float rounding) and is a plain nn.Module with the same structure, the
    folded norms replaced by nn.Identity.
    """
    folded = copy.deepcopy(model).eval()
    try:
        graph = fx.Tracer().trace(folded)
    except Exception as exc:  # fx raises many kinds
        raise UnsupportedModelError(
            "python control flow", type(model).__name__, f"torch.fx cannot trace it: {exc}"
        ) from exc
    modules = dict(folded.named_modules())
    calls = Counter(str(n.target) for n in graph.nodes if n.op == "call_module")
    for node in graph.nodes:
        norm = modules.get(str(node.target)) if node.op == "call_module" else None
        if not isinstance(norm, nn.BatchNorm2d) or norm.running_var is None:
            continue
        source = node.args[0]
        conv = modules.get(str(source.target)) if isinstance(source, fx.Node) else None
        if (
            not isinstance(conv, nn.Conv2d)
            or source.op != "call_module"
            or len(source.users) != 1
            or calls[str(source.target)] != 1
            or calls[str(node.target)] != 1
        ):
            continue
        _fold_into(conv, norm)
        _replace(folded, str(node.target), nn.Identity())
    return folded


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    scale = torch.rsqrt(norm.running_var + norm.eps)
    shift = -norm.running_mean * scale
    if norm.affine:
        scale = scale * norm.weight
        shift = shift * norm.weight + norm.bias
    bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
    conv.bias = nn.Parameter(bias * scale + shift)


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)
