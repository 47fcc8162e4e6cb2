"""Physical surgery: remove a plan's channels and get a smaller model."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

from prunelab.graph.plan import Plan
from prunelab.layers.attention import HeadPrunedMultiheadAttention
from prunelab.layers.timm_attention import sync_heads
from prunelab.layers.window_attention import (
    HeadPrunedMaxVitAttention,
    HeadPrunedWindowAttention,
    HeadPrunedWindowAttentionV2,
)

# dense attention class -> the same layer with heads pruned (a forward for a narrower inside)
_HEAD_PRUNED: dict[type, type] = {
    nn.MultiheadAttention: HeadPrunedMultiheadAttention,
    ShiftedWindowAttention: HeadPrunedWindowAttention,
    ShiftedWindowAttentionV2: HeadPrunedWindowAttentionV2,
    RelativePositionalMultiHeadAttention: HeadPrunedMaxVitAttention,
}


def prune(model: nn.Module, plan: Plan, inplace: bool = False) -> nn.Module:
    """Return `model` with the channels `plan` drops physically removed.

    The result is an ordinary module of the same classes with smaller layers:
    it runs at the speed of its new shapes, needs no hooks, and gives the same
    outputs as the model with the same channels masked to zero.
    """
    target = model if inplace else copy.deepcopy(model)
    removed = plan.removed_positions()
    by_param: dict[tuple[str, str], list[tuple[int, torch.Tensor]]] = {}
    for (module, param, dim), pos in removed.items():
        by_param.setdefault((module, param), []).append((dim, pos))

    original = {name: _layer_attrs(m) for name, m in target.named_modules()}
    for (module, param), cuts in by_param.items():
        mod = target.get_submodule(module)
        tensor = getattr(mod, param)
        new = tensor.detach()
        for dim, pos in cuts:
            keep = torch.ones(new.shape[dim], dtype=torch.bool)
            keep[pos] = False
            new = new.index_select(dim, torch.nonzero(keep).flatten().to(new.device))
        new = new.clone().contiguous()
        if isinstance(tensor, nn.Parameter):
            setattr(mod, param, nn.Parameter(new, requires_grad=tensor.requires_grad))
        else:
            mod.register_buffer(param, new, persistent=param not in mod._non_persistent_buffers_set)
    for name in {m for m, _ in by_param}:
        _update_attrs(target.get_submodule(name), original[name])
    sync_heads(target)  # timm's attention holds no tensor of its own: its head count
    return target


def _layer_attrs(m: nn.Module) -> dict[str, int]:
    if isinstance(m, nn.modules.conv._ConvNd):
        return {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
    if isinstance(m, ShiftedWindowAttention):  # the head width, which pruning keeps
        return {"head_dim": m.qkv.weight.shape[0] // 3 // m.num_heads}
    return {}


def _update_attrs(m: nn.Module, before: dict[str, int]) -> None:
    """Make a layer's recorded sizes agree with its new tensors."""
    if isinstance(m, nn.modules.conv._ConvNd) and m.transposed:
        m.in_channels, m.out_channels = m.weight.shape[0], m.weight.shape[1] * m.groups
    elif isinstance(m, nn.modules.conv._ConvNd):
        out_ch, per_group = m.weight.shape[0], m.weight.shape[1]
        depthwise = before["groups"] > 1 and before["groups"] == before["in"]
        if depthwise:
            multiplier = before["out"] // before["groups"]
            m.groups = out_ch // multiplier
            m.in_channels = m.groups
        else:
            m.in_channels = per_group * m.groups
        m.out_channels = out_ch
    elif isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        ref = m.weight if m.weight is not None else m.running_mean
        m.num_features = ref.shape[0]
    elif isinstance(m, nn.PReLU):
        m.num_parameters = m.weight.shape[0]
    elif isinstance(m, nn.MultiheadAttention):
        q_rows = (
            m.in_proj_weight.shape[0] // 3 if m._qkv_same_embed_dim else m.q_proj_weight.shape[0]
        )
        m.num_heads = q_rows // m.head_dim
        _to_head_pruned(m, q_rows != m.embed_dim)
    elif isinstance(m, ShiftedWindowAttention):
        m.num_heads = m.qkv.weight.shape[0] // 3 // before["head_dim"]
        _to_head_pruned(m, m.qkv.weight.shape[0] != 3 * m.qkv.weight.shape[1])
    elif isinstance(m, RelativePositionalMultiHeadAttention):
        m.n_heads = m.to_qkv.weight.shape[0] // 3 // m.head_dim
        _to_head_pruned(m, m.to_qkv.weight.shape[0] != 3 * m.to_qkv.weight.shape[1])


def _to_head_pruned(m: nn.Module, narrower: bool) -> None:
    """Heads were removed (head width kept): the dense forward cannot run a narrower inside.

    The class switch keeps every tensor (and the state dict's keys) as they are.
    """
    if narrower and type(m) in _HEAD_PRUNED:
        m.__class__ = _HEAD_PRUNED[type(m)]


def resize_to(model: nn.Module, shapes: dict[str, torch.Size]) -> nn.Module:
    """Give `model`'s tensors the shapes of a pruned state dict (values uninitialised).

    Used to rebuild a pruned model from its recipe: build the dense model,
    resize it to the saved shapes, then load the saved weights.
    """
    original = {name: _layer_attrs(m) for name, m in model.named_modules()}
    touched: set[str] = set()
    for key, shape in shapes.items():
        module, _, name = key.rpartition(".")
        try:
            mod = model.get_submodule(module)
        except AttributeError:
            continue  # load_state_dict reports unexpected keys with their names
        tensor = getattr(mod, name, None)
        if not isinstance(tensor, torch.Tensor) or tensor.shape == shape:
            continue
        new = torch.empty(shape, dtype=tensor.dtype, device=tensor.device)
        if isinstance(tensor, nn.Parameter):
            setattr(mod, name, nn.Parameter(new, requires_grad=tensor.requires_grad))
        else:
            mod.register_buffer(name, new, persistent=name not in mod._non_persistent_buffers_set)
        touched.add(module)
    for name in touched:
        _update_attrs(model.get_submodule(name), original[name])
    sync_heads(model)
    return model
