"""Depth pruning of dense blocks: find DenseNet layers and remove them with their channels.

A dense layer computes `cat([x, branch(x)], dim=1)`: it appends its few new
channels to everything before it. Removing it means replacing it by
`nn.Identity` *and* removing its new channels from every later consumer (the
following layers of the block, the transition or the final norm and
classifier). The channel graph already knows those consumers: the layer's new
channels form one group, so the layer is removed by cutting that whole group
with the ordinary surgery and then dropping the emptied layer. The result is
exactly the network built without the layer, and equals the network whose
group is masked to zero (`masked equals pruned`).

Only the last layers of a block are candidates at any time (`removable_tail`),
as DWR prunes dense blocks: removing a block's tail keeps the dense
connectivity of what stays intact.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from prunelab.errors import ConfigError
from prunelab.graph.blocks import named_to_remove
from prunelab.graph.groups import ChannelGraph, Group
from prunelab.graph.plan import Plan
from prunelab.graph.surgery import prune
from prunelab.graph.trace import trace

__all__ = ["find_dense_layers", "removable_tail", "remove_dense_layers", "zero_dense_layers"]

_CATS = (torch.cat, torch.concat)


def is_dense_layer(module: nn.Module) -> bool:
    """Whether `module`'s output is cat([x, branch(x)], dim=1) of its single input x."""
    if not any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules()):
        return False
    try:
        gm = fx.symbolic_trace(module)
    except Exception:  # fx fails in many ways on arbitrary code: not a dense layer then
        return False
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    if len(inputs) != 1 or not isinstance(out, fx.Node):
        return False
    if out.op != "call_function" or out.target not in _CATS:
        return False
    parts = out.args[0] if out.args else out.kwargs.get("tensors")
    dim = out.args[1] if len(out.args) > 1 else out.kwargs.get("dim", 0)
    return (
        isinstance(parts, (list, tuple)) and len(parts) == 2 and parts[0] is inputs[0]
        and parts[1] is not inputs[0] and dim == 1
    )  # fmt: skip


def find_dense_layers(model: nn.Module) -> list[str]:
    """Names of the model's dense layers, in module order (outermost only)."""
    found: list[str] = []
    for name, m in model.named_modules():
        if not name or any(name.startswith(f + ".") for f in found):
            continue
        if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            continue
        if is_dense_layer(m):
            found.append(name)
    return found


def _parent_and_index(name: str) -> tuple[str, int | None]:
    parent, _, last = name.rpartition(".")
    return parent, int(last) if last.isdigit() else None


def removable_tail(present: Sequence[str]) -> list[str]:
    """The dense layers among `present` that are the last present one of their block."""
    last: dict[str, tuple[int, str]] = {}
    out = []
    for name in present:
        parent, index = _parent_and_index(name)
        if index is None:  # not in an indexed container: no order to respect
            out.append(name)
        elif parent not in last or index > last[parent][0]:
            last[parent] = (index, name)
    return out + [name for _, name in last.values()]


def _group_of_layer(graph: ChannelGraph, name: str) -> Group:
    """The group of channels the dense layer `name` appends (produced only inside it)."""
    inside = name + "."
    for g in graph.groups:
        producers = [m for m in g.members if m.role == "out"]
        if producers and all(m.module.startswith(inside) for m in producers):
            return g
    raise ConfigError(
        f"dense layer {name!r}: no channel group is produced by it alone, so its channels "
        "cannot be removed from their consumers"
    )


def remove_dense_layers(
    model: nn.Module, names: Iterable[str], example_input: torch.Tensor
) -> nn.Module:
    """A copy of `model` without the named dense layers and without their channels downstream.

    Raises ConfigError naming the first name that is not a dense layer.
    """
    found = named_to_remove(model, names)
    names = [name for name, _ in found]
    for name, m in found:
        if not name or not is_dense_layer(m):
            raise ConfigError(f"{name!r} is not a dense layer (its output is not cat([x, f(x)]))")
    if not names:
        return copy.deepcopy(model)
    graph = trace(model, example_input)
    plan = Plan(graph)
    # Emptying whole groups is what Plan refuses for ordinary pruning (it would leave a layer
    # without outputs); here the layer producing them is dropped right after the surgery.
    plan.keep = {_group_of_layer(graph, n).index: torch.empty(0, dtype=torch.long) for n in names}
    target = prune(model, plan)
    for name in names:
        target.set_submodule(name, nn.Identity())
    return target


@torch.no_grad()
def zero_dense_layers(
    model: nn.Module, names: Iterable[str], example_input: torch.Tensor
) -> nn.Module:
    """A copy of `model` with every slice of the named layers' channels set to zero.

    The masked counterpart of `remove_dense_layers`: the layers stay, but their
    filters, norm parameters and every consumer's columns of their channels are 0.
    """
    graph = trace(model, example_input)
    target = copy.deepcopy(model).eval()
    for name in dict.fromkeys(names):
        for m in _group_of_layer(graph, name).members:
            getattr(target.get_submodule(m.module), m.param).index_fill_(m.dim, m.positions, 0.0)
    return target
