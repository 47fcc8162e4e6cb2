"""BWCP on pre-activation norm layers (BN -> ReLU -> conv: DenseNet, pre-activation ResNets).

The paper's mask multiplies the output of a norm layer by the channel's
activation probability sample, P = P(γ̂ z + β̂ > δ) being the chance that the
channel passes the ReLU behind it. In a conv-BN network that ReLU output is
the whole tensor, so the mask removes the producing convolution's filters.
In a pre-activation network the norm layer sits in front of its consumer
and normalises a tensor that other layers read too (DenseNet's concatenated
features; a pre-activation ResNet's residual stream): each such norm layer
gets its own mask over its own channels, and a channel it drops is an input
channel of *its* consumers only (the convolutions, or the classifier, that
read its activated output), network-slimming style. A produced channel that
no consumer reads any more is removed from its producer as well.

Where the paper is silent (its placement of BW in a pre-activation network
is not described), the choices here, selectable with `preact_whitening`:

- "whiten" (default): the BW layer replaces the pre-activation BN, as the
  paper's "BW acts on the BN before each conv" reads; its block-diagonal map
  cannot be folded into a producing convolution (the input is shared), so
  the export keeps it as a grouped 1x1 convolution over the whitening groups
  that still hold a kept channel (`prunelab.layers.SelectedNorm2d`). That
  costs g MACs per selected channel and pixel, counted in every cost, so the
  paper's "no extra inference cost" does not hold for these layers;
- "bn": pre-activation norm layers stay batch norm (masks from γ, β), the
  export is a plain channel selection and costs nothing extra.

This module finds the pre-activation norm layers and their consumers,
computes the costs of hard (or expected) masks on them and exports them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn

from prunelab.errors import UnsupportedModelError
from prunelab.graph import ChannelGraph
from prunelab.layers import BatchWhitening2d, SelectedNorm2d

__all__ = [
    "LeafTracer",
    "PreActNorm",
    "activated_consumers",
    "describe_preact",
    "export_preact",
    "group_keep",
    "install_preact",
    "preact_cost",
]

# Steps that keep each channel apart and map 0 to 0, so a channel zeroed at the norm
# layer's output is a zero input channel of the consumer.
_CHANNELWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.GELU, nn.Dropout, nn.Identity,
    nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)
F = nn.functional
_CHANNELWISE_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, F.silu, F.gelu, F.dropout, torch.flatten,
    F.avg_pool2d, F.max_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
}
_CHANNELWISE_METHODS = {"relu", "flatten"}


class LeafTracer(fx.Tracer):
    """fx tracer that does not look inside BW layers (their shape checks are Python)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, BatchWhitening2d) or super().is_leaf_module(m, qualname)


def _channelwise(node: fx.Node, mods: Mapping[str, nn.Module]) -> bool:
    if len(node.all_input_nodes) != 1:
        return False
    if node.op == "call_module":
        return isinstance(mods.get(str(node.target)), _CHANNELWISE_MODULES)
    if node.op == "call_function":
        return node.target in _CHANNELWISE_FUNCTIONS
    return node.op == "call_method" and node.target in _CHANNELWISE_METHODS


def activated_consumers(node: fx.Node, mods: Mapping[str, nn.Module]) -> list[str] | None:
    """The conv/linear layers reading `node`'s output through channel-wise steps only.

    None when anything else reads it (an addition, a concatenation, the output):
    then a channel zeroed there is not simply a dropped input column.
    """
    found: list[str] = []
    frontier = list(node.users)
    while frontier:
        user = frontier.pop()
        mod = mods.get(str(user.target)) if user.op == "call_module" else None
        if isinstance(mod, nn.Conv2d | nn.Linear):
            if isinstance(mod, nn.Conv2d) and mod.groups != 1:
                return None  # a grouped consumer cannot lose single input channels
            if str(user.target) not in found:
                found.append(str(user.target))
        elif _channelwise(user, mods):
            frontier.extend(user.users)
        else:
            return None
    return found or None


@dataclass
class PreActNorm:
    """A pre-activation norm layer: its consumers and where its channels come from."""

    name: str
    consumers: list[str]
    channels: int
    spatial: int = 0  # pixels per channel of its input (the whitening convolution's cost)
    # (group index, positions in this layer, units of the group) per producing group
    inputs: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    whiten_group: int = 0  # channels whitened together (0: plain batch norm)


def _inputs(graph: ChannelGraph, name: str) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    return [
        (g.index, m.positions, m.units)
        for g in graph.groups
        for m in g.members
        if m.module == name and m.role == "norm" and m.param == "weight"
    ]


def describe_preact(
    model: nn.Module, graph: ChannelGraph, consumers: Mapping[str, list[str]], example: torch.Tensor
) -> dict[str, PreActNorm]:
    """PreActNorm of each named norm layer; checks each consumer reads its channels 1:1."""
    out: dict[str, PreActNorm] = {}
    seen: dict[str, int] = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(
            lambda m, a, y, n=n: seen.__setitem__(n, int(a[0].shape[2] * a[0].shape[3]))
        )
        for n in consumers
    ]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    for name, users in consumers.items():
        channels = model.get_submodule(name).weight.shape[0]
        for user in users:
            width = model.get_submodule(user).weight.shape[1]
            if width != channels:
                raise UnsupportedModelError(
                    "pre-activation norm read through a reshape", user,
                    f"bwcp masks {name}'s {channels} channels as {user}'s inputs, "
                    f"but {user} has {width}",
                )  # fmt: skip
        out[name] = PreActNorm(name, list(users), channels, seen.get(name, 0), _inputs(graph, name))
    return out


# ------------------------------------------------------------------------------------ costs
def _needed(kept: torch.Tensor, whiten_group: int) -> torch.Tensor:
    """Probability that each input channel is read: a whitened channel's whole group is."""
    if whiten_group <= 0:
        return kept
    grouped = kept.view(-1, whiten_group)
    return (1.0 - torch.prod(1.0 - grouped, dim=1, keepdim=True)).expand_as(grouped).reshape(-1)


def effective_masks(
    preact: Mapping[str, PreActNorm], unit_masks: Mapping[int | str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Each pre-activation layer's own mask times the masks of the groups feeding it."""
    out = {}
    for name, info in preact.items():
        mask = unit_masks[name].to(torch.float64).clone()
        for gi, pos, units in info.inputs:
            if gi in unit_masks:  # a group with its own (post-conv) leading layers
                mask[pos] = mask[pos] * unit_masks[gi].to(torch.float64)[units]
        out[name] = mask
    return out


def group_keep(
    graph: ChannelGraph,
    preact: Mapping[str, PreActNorm],
    unit_masks: Mapping[int | str, torch.Tensor],
    shortcuts: bool = True,
    hard: bool = True,
) -> dict[int, torch.Tensor]:
    """Keep (probability) of every group unit once the pre-activation masks are applied.

    A unit read only through pre-activation layers stays if one of them reads it
    (`_needed`: a whitened layer reads its kept channels' whole groups); a unit
    with another reader follows its group's own mask. `hard`: 0/1 masks, and a
    group never loses every unit (its first stays, producing zeros).
    """
    eff = effective_masks(preact, unit_masks)
    readers: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
    behind: dict[int, set[str]] = {}
    for name, info in preact.items():
        need = _needed(eff[name], info.whiten_group)
        for gi, pos, units in info.inputs:
            readers.setdefault(gi, []).append((need, pos, units))
            behind.setdefault(gi, set()).update(info.consumers)
    keep: dict[int, torch.Tensor] = {}
    for g in graph.groups:
        own = unit_masks.get(g.index)
        q = torch.ones(g.size, dtype=torch.float64) if own is None else own.to(torch.float64)
        if g.index in readers and g.prunable and (shortcuts or not g.coupled):
            direct = any(c not in behind[g.index] for c in g.consumers)
            missed = torch.ones(g.size, dtype=torch.float64)  # P(no pre-activation reader)
            for need, pos, units in readers[g.index]:
                missed = missed.index_put((units,), missed[units] * (1.0 - need[pos]))
            read = 1.0 - missed
            # kept if a pre-activation layer reads it, or (another reader) its group keeps it
            q = 1.0 - (1.0 - read) * (1.0 - q) if direct else read
        if hard:
            q = (q > 0.5).to(torch.float64)
            if not bool(q.any()):
                q[0] = 1.0
        if g.index in readers or own is not None:
            keep[g.index] = q
    return keep


def preact_cost(
    graph: ChannelGraph,
    preact: Mapping[str, PreActNorm],
    unit_masks: Mapping[int | str, torch.Tensor],
    shortcuts: bool = True,
    hard: bool = True,
) -> dict[str, float]:
    """FLOPs (MACs) and parameters of the exported model for these (hard or expected) masks."""
    keep = group_keep(graph, preact, unit_masks, shortcuts, hard)
    eff = effective_masks(preact, unit_masks)
    shapes = {k: [float(v) for v in s] for k, s in graph.param_shapes.items()}
    for gi, q in keep.items():
        for m in graph.groups[gi].members:
            shapes[(m.module, m.param)][m.dim] -= float((1.0 - q[m.units]).sum())
    extra_flops, extra_params = 0.0, 0.0
    for name, info in preact.items():
        kept = float(eff[name].sum())
        for (module, _), shape in shapes.items():
            if module == name and len(shape) == 1:
                shape[0] = 0.0 if info.whiten_group else kept  # whitened: no BN is left
        for user in info.consumers:
            shapes[(user, "weight")][1] = kept
        if info.whiten_group:  # the grouped 1x1 whitening convolution and its bias
            selected = float(_needed(eff[name], info.whiten_group).sum())
            extra_flops += info.spatial * selected * info.whiten_group
            extra_params += selected * (info.whiten_group + 1)
    flops = extra_flops
    for layer in graph.layers.values():
        w = shapes[(layer.module, "weight")]
        flops += layer.out_spatial * w[0] * w[1] * layer.kernel
    params = extra_params
    for key, shape in shapes.items():
        if key not in graph.buffer_keys:
            size = 1.0
            for s in shape:
                size *= s
            params += size
    return {"flops": flops, "params": params}


# ----------------------------------------------------------------------------------- export
@torch.no_grad()
def export_preact(layer: nn.Module, mask: torch.Tensor) -> SelectedNorm2d:
    """The evaluation map of a masked pre-activation norm layer, in its input's indexing."""
    keep = mask.bool().cpu()
    if isinstance(layer, BatchWhitening2d):
        g = layer.group_size
        a, shift = layer.affine(mask.to(layer.weight))
        used = keep.view(-1, g).any(dim=1)
        index = torch.nonzero(used.repeat_interleave(g)).flatten()
        out = SelectedNorm2d(int(index.numel()), int(keep.sum()), int(used.sum()))
        out.to(layer.weight)
        out.whiten.weight.copy_(a[used.to(a.device)].reshape(-1, g, 1, 1))
        out.whiten.bias.copy_(shift[index.to(shift.device)])
        out.keep.copy_(torch.nonzero(keep[index]).flatten())
    elif isinstance(layer, nn.BatchNorm2d):
        index = torch.nonzero(keep).flatten()
        out = SelectedNorm2d(int(index.numel()), int(index.numel()), 0, layer.eps)
        out.to(layer.weight)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(out.norm, name).copy_(getattr(layer, name)[index.to(layer.weight.device)])
        out.norm.num_batches_tracked.copy_(layer.num_batches_tracked)
    else:
        raise UnsupportedModelError(
            "pre-activation norm layer", type(layer).__name__, "bwcp exports BN and BW layers"
        )
    out.index.copy_(index)
    return out.eval()


def placeholder(layer: nn.Module) -> nn.BatchNorm2d:
    """A BatchNorm2d of the layer's width, so the model traces while the export is pending."""
    return nn.BatchNorm2d(layer.weight.shape[0]).to(layer.weight).eval()


@torch.no_grad()
def install_preact(
    pruned: nn.Module,
    graph: ChannelGraph,
    keep: Mapping[int, torch.Tensor],
    exports: Mapping[str, tuple[SelectedNorm2d, torch.Tensor]],
    consumers: Mapping[str, list[str]],
) -> None:
    """Put each exported layer into the pruned model and cut its consumers' input columns.

    `graph` is the unpruned model's, `keep` the group masks its surgery applied,
    `exports[name]` = (layer in the unpruned indexing, its 0/1 channel mask).
    """
    for name, (layer, mask) in exports.items():
        alive = torch.ones(mask.numel(), dtype=torch.bool)
        for gi, pos, units in _inputs(graph, name):
            if gi in keep:
                alive[pos] &= keep[gi].bool()[units]
        new_index = torch.cumsum(alive.long(), 0) - 1
        if not bool(alive[layer.index.cpu()].all()):
            raise UnsupportedModelError(
                "pre-activation norm reading a removed channel", name, "a bwcp export bug"
            )
        layer.index.copy_(new_index[layer.index.cpu()])
        pruned.set_submodule(name, layer)
        columns = new_index[mask.bool().cpu()].to(layer.index.device)
        for user in consumers[name]:
            mod = pruned.get_submodule(user)
            mod.weight = nn.Parameter(mod.weight.index_select(1, columns).contiguous())
            if isinstance(mod, nn.Conv2d):
                mod.in_channels = mod.weight.shape[1]
            else:
                mod.in_features = mod.weight.shape[1]
