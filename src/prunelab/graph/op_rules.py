"""How each op maps channel variables from its inputs to its output.

`OpRules` is the half of the channel analysis that knows torch: one method
per kind of op. It relies on the variable bookkeeping of `ChannelAnalysis`
(`fresh`, `tie`, `pin`, `record`, `values`), which subclasses it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from prunelab.errors import UnsupportedModelError
from prunelab.graph.attention_rules import OUTPUTS, AttentionRules
from prunelab.graph.groups import LayerInfo
from prunelab.graph.op_tables import (
    _BINARY_FUNCTIONS,
    _BINARY_METHODS,
    _CAT_FUNCTIONS,
    _CHANNEL_MIXING_NORMS,
    _GATHER_FUNCTIONS,
    _INDEX_FUNCTIONS,
    _PASS_FUNCTIONS,
    _PASS_METHODS,
    _PASS_MODULES,
    _REDUCE_FUNCTIONS,
    _REDUCE_METHODS,
    _SHAPE_METHODS,
    _SPLIT_AWARE_FUNCTIONS,
    _SPLIT_AWARE_METHODS,
    _SPLIT_FUNCTIONS,
    _SPLIT_METHODS,
    _SPLIT_SAFE_FUNCTIONS,
    _SPLIT_SAFE_METHODS,
    _VIEW_METHODS,
    MAXVIT_ATTENTION,
    MULTIHEAD_ATTENTION,
    SWIN_ATTENTION,
    FrozenBatchNorm2d,
    patch_merging_pad,
)
from prunelab.graph.split_rules import SplitRules, _literal
from prunelab.graph.values import _ParamRef, _shape, _Value, _where
from prunelab.layers.timm_attention import is_timm_attention

_TRUSTED_PACKAGES = ("torch.", "torchvision.")
# functional forms of layers, and the layer a module must be to own their weight
_FUNCTIONAL_LAYERS: dict[object, type] = {
    F.linear: nn.Linear, F.conv1d: nn.Conv1d, F.conv2d: nn.Conv2d, F.conv3d: nn.Conv3d,
}
MODEL_INPUT = "model input"


def _overridden_base(mod: nn.Module) -> type | None:
    """The torch layer `mod` subclasses, if a class outside torch replaces its forward.

    A user's subclass of Conv2d that standardises its weight in forward (timm's
    StdConv2d) computes something else than Conv2d: reading it as a Conv2d would
    prune it into a silently different model.
    """
    cls = type(mod)
    if cls.__module__.startswith(_TRUSTED_PACKAGES):
        return None
    for base in cls.__mro__[1:]:
        if base.__module__.startswith(_TRUSTED_PACKAGES) and base is not nn.Module:
            return base if cls.forward is not base.forward else None
    return None


def _whole(s: slice, n: int) -> bool:
    """True if slice `s` keeps all `n` channels, and so all of any fewer (GhostNet's [:, :out])."""
    stop_ok = s.stop is None or (isinstance(s.stop, int) and s.stop >= n)
    return s.start in (None, 0) and s.step in (None, 1) and stop_ok


def _regrouped_axis(shape: Sequence[int], a: int, out: Sequence[int]) -> int | None:
    """The axis of `out` holding axis `a` of `shape` intact, if a view only regroups the rest."""
    before, after = math.prod(shape[:a]), math.prod(shape[a + 1 :])
    for b, n in enumerate(out):
        if n == shape[a] and math.prod(out[:b]) == before and math.prod(out[b + 1 :]) == after:
            return b
    return None


class OpRules(SplitRules, AttentionRules):
    """Channel rules of torch ops; mixed into ChannelAnalysis."""

    def run(self) -> None:
        for node in self.graph.nodes:
            if node.op == "placeholder":
                self.visit_placeholder(node)
            elif node.op == "get_attr":
                self.visit_get_attr(node)
            elif node.op == "call_module":
                self.visit_module(node)
            elif node.op == "call_function":
                self.visit_function(node)
            elif node.op == "call_method":
                self.visit_method(node)
            elif node.op == "output":
                for v in self.tracked_inputs(node):
                    self.pin(v.ids, "model output")

    def visit_placeholder(self, node: fx.Node) -> None:
        shape = _shape(node)
        if shape is not None and len(shape) >= 2:
            ids = self.fresh(shape[1])
            self.pin(ids, MODEL_INPUT)
            self.values[node] = _Value(ids, 1, shape)

    def channels_last(self, x: _Value) -> _Value:
        """`x` read with its channels on the last axis, if it is the model input itself.

        The input's channel axis is a guess (dim 1, as images have it); a layer that
        reads channels last (a linear layer or attention fed token tensors (B, N, C))
        tells the truth. The input's channels are fixed, so re-reading them is safe.
        """
        if x.axis == x.ndim - 1 or x.split is not None:
            return x
        if len(x.ids) and all(self.pinned.get(int(i)) == MODEL_INPUT for i in x.ids):
            ids = self.fresh(x.shape[-1])
            self.pin(ids, MODEL_INPUT)
            return _Value(ids, x.ndim - 1, x.shape)
        return x

    def visit_get_attr(self, node: fx.Node) -> None:
        path = str(node.target)
        owner, _, name = path.rpartition(".")
        obj = self.root
        for part in path.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, torch.Tensor):
            self.values[node] = _ParamRef(owner, name, tuple(obj.shape))

    # modules ----------------------------------------------------------------
    def visit_module(self, node: fx.Node) -> None:
        name = str(node.target)
        mod = self.root.get_submodule(name)
        inputs = self.tracked_inputs(node)
        x = inputs[0] if inputs else None
        if type(mod) in MULTIHEAD_ATTENTION:
            self.visit_multihead_attention(node, name, mod)
            return
        if type(mod) in SWIN_ATTENTION:
            self.visit_window_attention(node, name, mod)
            return
        if type(mod) in MAXVIT_ATTENTION:
            self.visit_maxvit_attention(node, name, mod)
            return
        if is_timm_attention(mod):
            self.visit_timm_attention(node, name, mod)
            return
        base = _overridden_base(mod)
        if base is not None:
            raise UnsupportedModelError(
                type(mod).__name__,
                name,
                f"subclasses {base.__name__} with its own forward, so its channels cannot be "
                "read off the base layer; leave it out of leaves= so the tracer follows it",
            )
        if x is not None and x.split is not None:
            raise self.unsupported(node, "its input's channels are split across two axes")
        if isinstance(mod, nn.modules.conv._ConvNd) and not mod.transposed:
            self.visit_conv(node, name, mod, x)
        elif isinstance(mod, nn.modules.conv._ConvNd) and mod.groups == 1:
            self.visit_conv_transpose(node, name, mod, x)
        elif isinstance(mod, nn.Linear):
            self.visit_linear(node, name, mod, x)
        elif isinstance(mod, (nn.modules.batchnorm._NormBase, FrozenBatchNorm2d)):
            self.visit_batchnorm(node, name, mod, x)
        elif isinstance(mod, _CHANNEL_MIXING_NORMS):
            self.opaque(node, f"{type(mod).__name__} normalises across channels")
        elif isinstance(mod, nn.LayerNorm):
            self.visit_layernorm(node, name, mod, x)
        elif isinstance(mod, nn.PReLU):
            if x is None:
                raise self.unsupported(node, "PReLU on an untracked input")
            if mod.num_parameters > 1:
                self.record(name, "weight", 0, x.ids, "norm")
            self.passthrough(node, x)
        elif isinstance(mod, nn.Flatten):
            if x is None:
                raise self.unsupported(node, "flatten of an untracked input")
            self.flatten(node, x, mod.start_dim, mod.end_dim)
        elif isinstance(mod, (nn.Softmax, nn.LogSoftmax)):
            if x is not None and mod.dim is not None and mod.dim % x.ndim == x.axis:
                self.opaque(node, "softmax over channels")
            elif x is not None:
                self.passthrough(node, x)
        elif isinstance(mod, _PASS_MODULES):
            if x is None:
                self.opaque(node, "untracked input")
            else:
                self.passthrough(node, x)
        else:
            raise UnsupportedModelError(
                type(mod).__name__, name, "no rule for how this module maps channels"
            )

    def visit_conv(
        self, node: fx.Node, name: str, mod: nn.modules.conv._ConvNd, x: _Value | None
    ) -> None:
        if x is None or x.axis != 1:
            raise self.unsupported(node, "convolution input has no channel axis at dim 1")
        g, cin, cout = mod.groups, mod.in_channels, mod.out_channels
        ipg, opg = cin // g, cout // g
        out_shape = _shape(node)
        assert out_shape is not None
        if ipg == 1:
            # Depthwise (with channel multiplier opg): each output is tied to its input.
            out_ids = np.repeat(x.ids, opg)
        else:
            if g > 1:
                # Grouped: the same in-group position is removed from every group,
                # so all groups keep equal widths.
                tied = x.ids.reshape(g, ipg)
                for k in range(1, g):
                    self.tie(tied[0], tied[k])
            self.record(name, "weight", 1, x.ids[:ipg], "in")
            out_ids = self.fresh(cout)
            if g > 1:
                tied_out = out_ids.reshape(g, opg)
                for k in range(1, g):
                    self.tie(tied_out[0], tied_out[k])
        self.record(name, "weight", 0, out_ids, "out")
        if mod.bias is not None:
            self.record(name, "bias", 0, out_ids, "out")
        if name in self.ignored:
            self.pin(out_ids, f"ignored module {name}")
        self.add_layer(name, "conv", mod.weight.shape, out_shape, channel_axis=1)
        self.values[node] = _Value(out_ids, 1, out_shape)

    def visit_conv_transpose(
        self, node: fx.Node, name: str, mod: nn.modules.conv._ConvNd, x: _Value | None
    ) -> None:
        """A transposed conv: its weight is (in, out, k...), the other way round."""
        if x is None or x.axis != 1:
            raise self.unsupported(node, "convolution input has no channel axis at dim 1")
        out_shape = _shape(node)
        assert out_shape is not None
        self.record(name, "weight", 0, x.ids, "in")
        out_ids = self.fresh(mod.out_channels)
        self.record_outputs(name, mod, out_ids, weight_dim=1)
        # MACs: every input element meets out x k weights (metrics.count's formula)
        self.add_layer(name, "conv", mod.weight.shape, x.shape, channel_axis=1)
        self.values[node] = _Value(out_ids, 1, out_shape)

    def record_outputs(
        self, name: str, mod: nn.Module, out_ids: np.ndarray, weight_dim: int = 0
    ) -> None:
        """A layer's output channels: its weight slices, its bias, and `ignore`."""
        self.record(name, "weight", weight_dim, out_ids, "out")
        if getattr(mod, "bias", None) is not None:
            self.record(name, "bias", 0, out_ids, "out")
        if name in self.ignored:
            self.pin(out_ids, f"ignored module {name}")

    def visit_linear(self, node: fx.Node, name: str, mod: nn.Linear, x: _Value | None) -> None:
        out_shape = _shape(node)
        assert out_shape is not None
        if x is not None:
            x = self.channels_last(x)
            if x.axis != x.ndim - 1:
                raise self.unsupported(node, "linear layer applied across a non-channel axis")
            self.record(name, "weight", 1, x.ids, "in")
        out_ids = self.fresh(mod.out_features)
        self.record_outputs(name, mod, out_ids)
        self.add_layer(name, "linear", mod.weight.shape, out_shape, channel_axis=len(out_shape) - 1)
        self.values[node] = _Value(out_ids, len(out_shape) - 1, out_shape)

    def visit_batchnorm(
        self, node: fx.Node, name: str, mod: nn.Module, x: _Value | None
    ) -> None:
        if x is None or x.axis != 1:
            raise self.unsupported(node, "batch norm input has no channel axis at dim 1")
        for pname in ("weight", "bias", "running_mean", "running_var"):
            if getattr(mod, pname, None) is not None:
                self.record(name, pname, 0, x.ids, "norm")
        self.passthrough(node, x)

    def functional_batchnorm(self, node: fx.Node) -> None:
        """F.batch_norm inside a module's forward (timm's BatchNormAct2d).

        It normalises each channel on its own, so its statistics and affine
        tensors, read straight off the module, are that channel's norm members.
        """
        x = self.tracked(node.args[0]) if node.args else None
        if x is None or x.axis != 1:
            raise self.unsupported(node, "batch norm input has no channel axis at dim 1")
        for pos, key in enumerate(("running_mean", "running_var", "weight", "bias"), start=1):
            a = self.arg(node, pos, key, None)
            if a is None:
                continue
            ref = self.values.get(a) if isinstance(a, fx.Node) else None
            if not isinstance(ref, _ParamRef) or ref.shape != (len(x.ids),):
                raise self.unsupported(node, f"its {key} is computed, not a tensor of a module")
            self.record(ref.module, ref.name, 0, x.ids, "norm")
        self.passthrough(node, x)

    def functional_layer(self, node: fx.Node) -> None:
        """F.linear / F.conv2d on a layer's own tensors (timm's Linear, Conv2dSame).

        A subclass's forward that calls the functional form with its own weight and
        bias computes what the layer computes (padding aside, which keeps channels),
        so it gets the layer's rule. A weight computed in forward (a standardised
        one, as in StdConv2d) is something else: refused.
        """
        layer = _FUNCTIONAL_LAYERS[node.target]
        weight = self.values.get(self.arg(node, 1, "weight", None))  # type: ignore[arg-type]
        bias_arg = self.arg(node, 2, "bias", None)
        if not isinstance(weight, _ParamRef) or weight.name != "weight":
            raise self.unsupported(node, "its weight is computed, not a layer's own weight")
        mod = self.root.get_submodule(weight.module)
        if not isinstance(mod, layer):
            raise self.unsupported(node, f"its weight belongs to no {layer.__name__}")
        bias = self.values.get(bias_arg) if isinstance(bias_arg, fx.Node) else bias_arg
        own = None if mod.bias is None else _ParamRef(weight.module, "bias", tuple(mod.bias.shape))
        if bias != own:
            raise self.unsupported(node, f"its bias is not the bias of {weight.module}")
        x = self.tracked(node.args[0]) if node.args else None
        if isinstance(mod, nn.Linear):
            self.visit_linear(node, weight.module, mod, x)
            return
        groups = self.arg(node, 6, "groups", 1)
        if groups != mod.groups:
            raise self.unsupported(node, f"groups={groups}, but {weight.module} has {mod.groups}")
        self.visit_conv(node, weight.module, mod, x)  # type: ignore[arg-type]

    def visit_layernorm(
        self, node: fx.Node, name: str, mod: nn.LayerNorm, x: _Value | None
    ) -> None:
        if x is None:
            raise self.unsupported(node, "layer norm of an untracked input")
        if x.axis >= x.ndim - len(mod.normalized_shape):
            self.opaque(node, "LayerNorm normalises across channels")
        else:
            self.passthrough(node, x)

    def add_layer(
        self,
        name: str,
        kind: str,
        wshape: torch.Size,
        out_shape: Sequence[int],
        channel_axis: int,
        called_in: str | None = None,
    ) -> None:
        """Note a conv/linear layer's cost; `called_in` names the leaf that calls it, if any."""
        caller = called_in or name
        if self.inference_modules is not None and caller not in self.inference_modules:
            return  # a training-only branch: it costs nothing at inference
        spatial = math.prod(s for i, s in enumerate(out_shape) if i not in (0, channel_axis))
        prev = self.layers.get(name)
        total = spatial + (prev.out_spatial if prev else 0)
        self.layers[name] = LayerInfo(name, kind, tuple(wshape), total)  # type: ignore[arg-type]

    # functions and methods ---------------------------------------------------
    def visit_function(self, node: fx.Node) -> None:
        t = node.target
        inputs = self.tracked_inputs(node)
        if any(v.split for v in inputs) and t not in _SPLIT_SAFE_FUNCTIONS | _SPLIT_AWARE_FUNCTIONS:
            raise self.unsupported(node, "its input's channels are split across two axes")
        if t in _BINARY_FUNCTIONS:
            self.binary(node)
        elif t in _CAT_FUNCTIONS:
            self.cat(node)
        elif t is torch.flatten:
            x = self.require(node, inputs)
            start = self.arg(node, 1, "start_dim", 0)
            end = self.arg(node, 2, "end_dim", -1)
            self.flatten(node, x, start, end)
        elif t in _REDUCE_FUNCTIONS:
            self.reduce(node, self.require(node, inputs))
        elif t in (torch.reshape,):
            self.view(node, self.require(node, inputs), node.args[1:])
        elif t in (torch.permute, torch.transpose, torch.swapaxes, torch.swapdims):
            self.permute(node, self.require(node, inputs))
        elif t in (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax):
            self.softmax(node, self.require(node, inputs))
        elif t is F.pad:
            self.pad(node, self.require(node, inputs))
        elif t is F.batch_norm:
            self.functional_batchnorm(node)
        elif t in _FUNCTIONAL_LAYERS:
            self.functional_layer(node)
        elif t is patch_merging_pad:
            self.patch_merging(node, self.require(node, inputs))
        elif t in _SPLIT_FUNCTIONS:
            self.split(node, self.require(node, inputs))
        elif t is operator.getitem:
            self.getitem(node)
        elif t is getattr or t in (len, math.prod):
            return  # shape queries
        elif isinstance(t, type) and issubclass(t, tuple):
            # a named tuple of outputs (GoogLeNetOutputs): what goes in is returned
            for v in inputs:
                self.pin(v.ids, f"returned in {t.__name__}")
        elif t in (F.normalize, F.group_norm, F.layer_norm, F.local_response_norm):
            self.opaque(node, f"{getattr(t, '__name__', t)} mixes channels")
        elif t in _INDEX_FUNCTIONS:
            return  # indices: no channel axis, nothing to track
        elif t in _GATHER_FUNCTIONS:
            x = self.tracked(node.args[0])
            if x is None or x.axis != 1:
                raise self.unsupported(node, "gathers from a tensor without channels at dim 1")
            self.passthrough(node, x)
        elif t in _PASS_FUNCTIONS:
            if inputs:
                self.passthrough(node, inputs[0])
            else:
                self.opaque(node, "untracked input")
        elif not inputs:
            self.constant(node)
        else:
            raise self.unsupported(node, "no rule for how this op maps channels")

    def visit_method(self, node: fx.Node) -> None:
        name = str(node.target)
        inputs = self.tracked_inputs(node)
        if name in _SHAPE_METHODS:
            return
        x = self.tracked(node.args[0]) if node.args else None
        ref = self.values.get(node.args[0]) if node.args else None
        if isinstance(ref, _ParamRef) and name == "expand" and self.keeps_rank(node, ref):
            self.values[node] = ref  # a class token broadcast over the batch: still the parameter
            return
        if any(v.split for v in inputs) and name not in _SPLIT_SAFE_METHODS | _SPLIT_AWARE_METHODS:
            raise self.unsupported(node, "its input's channels are split across two axes")
        if name in _BINARY_METHODS:
            self.binary(node)
        elif x is None:
            if not inputs:
                self.constant(node)
                return
            raise self.unsupported(node, "method called on an untracked tensor")
        elif name in _PASS_METHODS:
            self.passthrough(node, x)
        elif name == "flatten":
            start, end = self.arg(node, 1, "start_dim", 0), self.arg(node, 2, "end_dim", -1)
            self.flatten(node, x, start, end)
        elif name in _VIEW_METHODS:
            self.view(node, x, node.args[1:])
        elif name in _REDUCE_METHODS:
            self.reduce(node, x)
        elif name in ("permute", "transpose", "swapaxes", "swapdims"):
            self.permute(node, x)
        elif name in ("softmax", "log_softmax"):
            self.softmax(node, x)
        elif name in _SPLIT_METHODS:
            self.split(node, x)
        elif name in ("unsqueeze", "squeeze"):
            self.squeeze(node, x, name)
        elif name in ("expand", "expand_as"):
            out = _shape(node)
            if out is None or out[x.axis + len(out) - x.ndim] != len(x.ids):
                raise self.unsupported(node, "expand changes the channel axis")
            self.values[node] = _Value(x.ids, x.axis + len(out) - x.ndim, out)
        else:
            raise self.unsupported(node, "no rule for how this method maps channels")

    @staticmethod
    def keeps_rank(node: fx.Node, ref: _ParamRef) -> bool:
        """An expand that only broadcasts size-1 axes (so the parameter's axes stay put)."""
        out = _shape(node)
        return out is not None and len(out) == len(ref.shape)

    def require(self, node: fx.Node, inputs: list[_Value]) -> _Value:
        if not inputs:
            raise self.unsupported(node, "expected a tensor with channels")
        return inputs[0]

    @staticmethod
    def arg(node: fx.Node, pos: int, key: str, default: object) -> object:
        if len(node.args) > pos:
            return node.args[pos]
        return node.kwargs.get(key, default)

    def constant(self, node: fx.Node) -> None:
        """A tensor made from nothing traced (torch.zeros(...)): its size is fixed."""
        shape = _shape(node)
        if shape is not None and len(shape) >= 2:
            ids = self.fresh(shape[1])
            self.pin(ids, f"tensor of fixed size made at {_where(node)}")
            self.values[node] = _Value(ids, 1, shape)

    def binary(self, node: fx.Node) -> None:
        out = _shape(node)
        operands = list(node.args[:2]) + [node.kwargs[k] for k in ("other",) if k in node.kwargs]
        tracked = [(a, self.tracked(a)) for a in operands]
        values = [v for _, v in tracked if v is not None]
        if out is None or len(out) < 1:
            return
        if any(v.split for v in values):
            self.split_binary(node, operands, out)
            return
        if not values:
            nodes = [a for a in operands if isinstance(a, fx.Node)]
            if any(isinstance(self.values.get(a), _ParamRef) for a in nodes):
                self.constant(node)
            return
        axes = {v.axis + len(out) - v.ndim for v in values}
        if len(axes) != 1:
            raise self.unsupported(node, "operands disagree on which axis holds channels")
        axis = axes.pop()
        channels = out[axis]
        ids: np.ndarray | None = None
        for v in values:
            if len(v.ids) == channels:
                if ids is None:
                    ids = v.ids
                else:
                    self.tie(ids, v.ids)
            elif len(v.ids) != 1:
                raise self.unsupported(node, "operands have different channel counts")
        for a in operands:
            ref = self.values.get(a) if isinstance(a, fx.Node) else None
            if isinstance(ref, _ParamRef):
                pdim = axis - (len(out) - len(ref.shape))
                if pdim < 0 or ref.shape[pdim] == 1:
                    continue
                if ref.shape[pdim] != channels:
                    raise self.unsupported(node, f"parameter {ref.module}.{ref.name} misaligned")
                pids = self.fresh(channels, source=False)
                self.record(ref.module, ref.name, pdim, pids, "param")
                if ids is None:
                    ids = pids
                else:
                    self.tie(ids, pids)
        if ids is None:  # every operand broadcasts a single channel
            ids = self.fresh(channels)
            self.pin(ids, f"broadcast at {_where(node)}")
        self.values[node] = _Value(ids, axis, out)

    def cat(self, node: fx.Node) -> None:
        tensors = node.args[0] if node.args else node.kwargs["tensors"]
        dim = self.arg(node, 1, "dim", 0)
        out = _shape(node)
        assert out is not None
        dim = int(dim) % len(out)  # type: ignore[call-overload]
        parts = []
        for t in tensors:  # type: ignore[union-attr]
            v = self.tracked(t)
            ref = self.values.get(t) if isinstance(t, fx.Node) else None
            if v is None and not isinstance(ref, _ParamRef):
                raise self.unsupported(node, "concatenates an untracked tensor")
            parts.append(v if v is not None else ref)
        axes = {p.axis + len(out) - p.ndim for p in parts if isinstance(p, _Value)}
        if len(axes) != 1:
            why = "no operand has channels" if not axes else "operands disagree"
            raise self.unsupported(node, f"{why} on which axis holds channels")
        axis = axes.pop()
        parts = [p if isinstance(p, _Value) else self.param_part(node, p, axis, dim) for p in parts]
        if dim == axis:
            self.values[node] = _Value(np.concatenate([p.ids for p in parts]), axis, out)
        else:
            for p in parts[1:]:
                self.tie(parts[0].ids, p.ids)
            self.values[node] = _Value(parts[0].ids, axis, out)

    def param_part(self, node: fx.Node, ref: _ParamRef, axis: int, dim: int) -> _Value:
        """A parameter concatenated to tracked tensors (ViT's class token before the patches)."""
        out = _shape(node)
        assert out is not None
        pdim = axis - (len(out) - len(ref.shape))
        if pdim < 0 or dim == axis:
            ids = self.fresh(out[axis] if pdim < 0 else ref.shape[pdim])
            self.pin(ids, f"parameter {ref.module}.{ref.name} concatenated at {_where(node)}")
            return _Value(ids, axis, ref.shape)
        ids = self.fresh(ref.shape[pdim], source=False)
        self.record(ref.module, ref.name, pdim, ids, "param")
        return _Value(ids, axis, ref.shape)

    def flatten(self, node: fx.Node, x: _Value, start: object, end: object) -> None:
        out = _shape(node)
        assert out is not None
        start_i = int(start) % x.ndim  # type: ignore[call-overload]
        end_i = int(end) % x.ndim  # type: ignore[call-overload]
        if x.split is not None:
            self.split_flatten(node, x, start_i, end_i)
        elif x.axis < start_i:
            self.values[node] = _Value(x.ids, x.axis, out)
        elif x.axis > end_i:
            self.values[node] = _Value(x.ids, x.axis - (end_i - start_i), out)
        elif x.axis == start_i:
            inner = math.prod(x.shape[x.axis + 1 : end_i + 1])
            self.values[node] = _Value(np.repeat(x.ids, inner), start_i, out)
        else:
            self.opaque(node, "flatten merges the channel axis into an earlier one")

    def view(self, node: fx.Node, x: _Value, shape_args: Sequence[object]) -> None:
        out = _shape(node)
        assert out is not None
        if len(shape_args) == 1 and isinstance(shape_args[0], (list, tuple)):
            shape_args = shape_args[0]
        a, c = x.axis, len(x.ids)
        literal = _literal(shape_args, a)
        if x.split is not None:
            self.merge_view(node, x, literal)
        elif self.split_view(node, x, shape_args):
            return
        elif (
            len(out) > a
            and tuple(out[:a]) == x.shape[:a]
            and out[a] == c
            and (math.prod(out[a + 1 :]) == math.prod(x.shape[a + 1 :]))
        ):
            if literal:
                self.opaque(node, "view with a hard-coded channel count")
            else:
                self.values[node] = _Value(x.ids, a, out)
        elif len(out) == a + 1 and tuple(out[:a]) == x.shape[:a]:
            if literal:
                self.opaque(node, "view with a hard-coded feature count")
            else:
                inner = math.prod(x.shape[a + 1 :])
                self.values[node] = _Value(np.repeat(x.ids, inner), a, out)
        elif (b := _regrouped_axis(x.shape, a, out)) is not None:
            # the axes before and after the channels regroup among themselves (a window
            # partition of (B, H, W, C) tokens): the channels move to axis b intact
            if _literal(shape_args, b):
                self.opaque(node, "view with a hard-coded channel count")
            else:
                self.values[node] = _Value(x.ids, b, out)
        else:
            raise self.unsupported(
                node, f"reshape {x.shape} -> {out} changes the channel axis (a channel shuffle?)"
            )

    def reduce(self, node: fx.Node, x: _Value) -> None:
        out = _shape(node)
        dims = self.arg(node, 1, "dim", None)
        keepdim = bool(self.arg(node, 2, "keepdim", False))
        if dims is None or out is None:
            self.opaque(node, "reduction over all axes")
            return
        dims_l = [int(d) % x.ndim for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
        if x.split is not None:
            self.split_reduce(node, x, dims_l, keepdim)
        elif x.axis in dims_l:
            self.opaque(node, "reduction over channels")
        else:
            axis = x.axis if keepdim else x.axis - sum(d < x.axis for d in dims_l)
            self.values[node] = _Value(x.ids, axis, out)

    def permute(self, node: fx.Node, x: _Value) -> None:
        out = _shape(node)
        assert out is not None
        if node.target in ("permute", torch.permute):
            dims = node.args[1:] if node.op == "call_method" else node.args[1]
            if node.op == "call_method" and len(dims) == 1 and isinstance(dims[0], (list, tuple)):
                dims = dims[0]
            order = [int(d) % x.ndim for d in dims]  # type: ignore[union-attr]
        else:
            d0, d1 = (int(d) % x.ndim for d in node.args[1:3])  # type: ignore[call-overload]
            order = list(range(x.ndim))
            order[d0], order[d1] = d1, d0
        if x.split is not None:
            self.split_permute(node, x, order)
        else:
            self.values[node] = _Value(x.ids, order.index(x.axis), out)

    def squeeze(self, node: fx.Node, x: _Value, name: str) -> None:
        out = _shape(node)
        assert out is not None
        dim = self.arg(node, 1, "dim", None)
        if name == "unsqueeze":
            d = int(dim) % (x.ndim + 1)  # type: ignore[call-overload]
            axis = x.axis + 1 if d <= x.axis else x.axis
        else:
            dims = range(x.ndim) if dim is None else [int(dim) % x.ndim]  # type: ignore[call-overload]
            removed = [d for d in dims if x.shape[d] == 1 and d != x.axis]
            if x.axis in dims and x.shape[x.axis] == 1:
                self.opaque(node, "squeezes a single-channel axis")
                return
            axis = x.axis - sum(d < x.axis for d in removed)
        self.values[node] = _Value(x.ids, axis, out)

    def softmax(self, node: fx.Node, x: _Value) -> None:
        dim = self.arg(node, 1, "dim", None)
        if dim is not None and x.split is not None:
            self.split_softmax(node, x, int(dim) % x.ndim)  # type: ignore[call-overload]
        elif dim is None or int(dim) % x.ndim == x.axis:  # type: ignore[call-overload]
            self.opaque(node, "softmax over channels")
        else:
            self.passthrough(node, x)

    def patch_merging(self, node: fx.Node, x: _Value) -> None:
        """Swin's patch merging: the four 2x2 neighbours side by side along the channels."""
        out = _shape(node)
        if out is None or x.axis != x.ndim - 1 or out[-1] != 4 * len(x.ids):
            raise self.unsupported(node, "patch merging of a tensor without channels last")
        self.values[node] = _Value(np.tile(x.ids, 4), x.axis, out)

    def pad(self, node: fx.Node, x: _Value) -> None:
        pads = self.arg(node, 1, "pad", ())
        padded_dims = len(pads) // 2  # type: ignore[arg-type]
        if x.axis >= x.ndim - padded_dims:
            self.opaque(node, "padding along the channel axis")
        else:
            self.passthrough(node, x)

    def split(self, node: fx.Node, x: _Value) -> None:
        dim = self.arg(node, 2, "dim", 0)
        if node.target in ("unbind", torch.unbind):
            dim = self.arg(node, 1, "dim", 0)
        if int(dim) % x.ndim != x.axis:  # type: ignore[call-overload]
            self.values[node] = ("split", x)
            return
        n = self.arg(node, 1, "chunks", None) if node.target in ("chunk", torch.chunk) else None
        if isinstance(n, int) and n > 0 and len(x.ids) % n == 0:
            # chunk(n) cuts wherever the pruned tensor's n-ths are, so every piece
            # must lose the same positions: they are tied into one unit.
            pieces = x.ids.reshape(n, -1)
            for k in range(1, n):
                self.tie(pieces[0], pieces[k])
            self.values[node] = ("chunk-channels", x, list(pieces))
        else:
            self.pin(x.ids, f"split along channels at {_where(node)}")
            self.values[node] = ("split-channels", x)

    def getitem(self, node: fx.Node) -> None:
        src, idx = node.args[0], node.args[1]
        v = self.tracked(src)
        if v is None:
            marker = self.values.get(src) if isinstance(src, fx.Node) else None
            if isinstance(marker, tuple) and marker[0] == OUTPUTS:
                self.outputs_item(node, marker, idx)
            elif isinstance(marker, tuple) and marker[0] == "split":
                self.passthrough(node, marker[1])
            elif isinstance(marker, tuple) and marker[0] == "chunk-channels":
                x = marker[1]
                self.values[node] = _Value(marker[2][idx], x.axis, _shape(node) or x.shape)
            elif isinstance(marker, tuple):
                self.opaque(node, "piece of a channel split")
            elif _shape(node) is not None and isinstance(src, fx.Node) and src.op != "placeholder":
                self.constant(node)
            return
        items = list(idx) if isinstance(idx, tuple) else [idx]
        if any(i is Ellipsis for i in items):
            k = items.index(Ellipsis)
            fill = v.ndim - (len(items) - 1 - sum(i is None for i in items))
            items = items[:k] + [slice(None)] * fill + items[k + 1 :]
        in_dim = out_dim = 0
        axis: int | None = None
        for it in items:
            if it is None:
                out_dim += 1
                continue
            if in_dim == v.axis:
                if isinstance(it, slice) and _whole(it, len(v.ids)):
                    axis = out_dim
                else:
                    self.opaque(node, "indexing along channels")
                    return
            if isinstance(it, int):
                in_dim += 1
            elif isinstance(it, slice):
                in_dim += 1
                out_dim += 1
            else:
                if in_dim > v.axis:
                    in_dim += 1
                    out_dim += 1
                    continue
                raise self.unsupported(node, "advanced indexing before the channel axis")
        if axis is None:
            axis = out_dim + (v.axis - in_dim)
        out = _shape(node)
        assert out is not None
        self.values[node] = _Value(v.ids, axis, out)
