"""Trace a model into channel groups.

How it works, in one paragraph: the model is traced with torch.fx and run once
on the example input to learn every tensor's shape. Each tensor with a channel
axis carries one *channel variable* per channel. Layers that create channels
(conv, linear, the model input, parameters used directly) make fresh
variables; ops that pass channels through keep them; a residual add or an SE
multiply unions the variables of its operands position by position; a
concatenation joins the operands' lists; a flatten repeats each variable H*W
times. Every tensor slice of a module that is indexed by channels (conv rows,
consumer columns, BN vectors) is recorded as a member with the variables at
its positions. At the end, variables tied by ops form *units*, and variables
created together (one layer's outputs) tie units into *groups*.

Ops that mix channels (a mean over channels, GroupNorm, slicing the channel
axis, hard-coded channel counts in a view) fix their channels in place: the
groups they touch are left unpruned. Ops the tracer does not know raise one
`UnsupportedModelError` naming the op and where it is, before anything is
changed.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

from prunelab.errors import UnsupportedModelError
from prunelab.graph.channel_analysis import ChannelAnalysis
from prunelab.graph.groups import ChannelGraph


class _Tracer(fx.Tracer):
    """fx tracer that keeps the usual leaves (torch.nn modules) plus user leaves."""

    def __init__(self, leaves: tuple[type, ...] = ()) -> None:
        super().__init__()
        self._extra_leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self._extra_leaves and isinstance(m, self._extra_leaves):
            return True
        return super().is_leaf_module(m, qualname)


def trace(
    model: nn.Module,
    example_input: torch.Tensor | tuple[torch.Tensor, ...],
    ignore: Iterable[str | nn.Module] = (),
    leaves: tuple[type, ...] = (),
) -> ChannelGraph:
    """Trace `model` on `example_input` into channel groups.

    `ignore` lists modules (names or instances) whose output channels are
    never pruned; the model's outputs (the classifier) are never pruned.
    `leaves` adds module types the tracer must not look inside (they must be
    known to it: a leaf it has no rule for is an UnsupportedModelError).
    Raises UnsupportedModelError, naming the op and module, for anything the
    tracer cannot prune through. The model is not modified.
    """
    names = {id(m): n for n, m in model.named_modules()}
    ignored = {names.get(id(i), "") if isinstance(i, nn.Module) else str(i) for i in ignore}
    unknown = ignored - set(names.values())
    if unknown:
        raise KeyError(f"ignore names modules the model does not have: {sorted(unknown)}")
    was_training = model.training
    model.eval()
    try:
        try:
            graph = _Tracer(leaves).trace(model)
        except Exception as exc:  # fx raises many kinds; turn all into one clear error
            raise UnsupportedModelError(
                "python control flow", type(model).__name__, f"torch.fx cannot trace it: {exc}"
            ) from exc
        gm = fx.GraphModule(model, graph)
        inputs = example_input if isinstance(example_input, tuple) else (example_input,)
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(*inputs)
        except Exception as exc:
            raise UnsupportedModelError(
                "forward", type(model).__name__, f"running the traced model failed: {exc}"
            ) from exc
        analysis = ChannelAnalysis(gm, model, ignored)
        analysis.run()
        param_shapes = _param_shapes(model)
        groups = analysis.build(param_shapes)
    finally:
        model.train(was_training)
    return ChannelGraph(
        groups=groups,
        layers=analysis.layers,
        param_shapes=param_shapes,
        input_shape=tuple(inputs[0].shape),
        module_types={n: type(m) for n, m in model.named_modules()},
        buffer_keys=frozenset(
            (mn, bn)
            for mn, mod in model.named_modules()
            for bn, _ in mod.named_buffers(recurse=False)
        ),
    )


def _param_shapes(model: nn.Module) -> dict[tuple[str, str], tuple[int, ...]]:
    shapes: dict[tuple[str, str], tuple[int, ...]] = {}
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            shapes[(mname, pname)] = tuple(p.shape)
        for bname, b in mod.named_buffers(recurse=False):
            if b is not None and b.dim() > 0:
                shapes[(mname, bname)] = tuple(b.shape)
    return shapes
