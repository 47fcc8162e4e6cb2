"""Channel rules of attention layers: whole heads are the units.

A head owns `head_dim` rows of each of the query, key and value projections
(and of their biases) and the same `head_dim` columns of the output
projection. Removing a head removes all of them and keeps `head_dim`: the
remaining heads compute exactly what they computed before, and the removed
ones' terms leave the output projection's sum. A masked head (all its rows and
columns zero) contributes zero too, so masked equals pruned.

The input columns of the projections and the output rows belong to the
tensors around the layer (the residual stream of a transformer). Attention
costs are counted here as `ProductCost`s: the projections, and the two
matmuls (queries x keys, weights x values), whose size is 2 * L * S per kept
channel of the heads.
"""

from __future__ import annotations

import numpy as np
import torch.fx as fx
import torch.nn as nn

from prunelab.graph.groups import ProductCost
from prunelab.graph.values import _shape, _Value, _where

# What a multi-output layer's node holds: its outputs, the heads, and why reading
# an output other than the first fixes the heads.
OUTPUTS = "outputs"


class AttentionRules:
    """Rules for attention modules; mixed into OpRules (uses its bookkeeping)."""

    def head_rows(self, heads: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Fresh head variables and, per row of one projection, the head that owns it."""
        ids = self.fresh(heads)  # type: ignore[attr-defined]
        return ids, np.repeat(ids, head_dim)

    def visit_multihead_attention(
        self, node: fx.Node, name: str, mod: nn.MultiheadAttention
    ) -> None:
        q, k, v = (
            self.attention_input(node, i, key) for i, key in enumerate(("query", "key", "value"))
        )
        heads, rows = self.head_rows(mod.num_heads, mod.head_dim)
        record = self.record  # type: ignore[attr-defined]
        if mod._qkv_same_embed_dim:
            for x in (q, k, v):  # one packed weight reads all three: their columns are tied
                record(name, "in_proj_weight", 1, x.ids, "in")
            record(name, "in_proj_weight", 0, np.tile(rows, 3), "out")
            projections = [("in_proj_weight", x) for x in (q, k, v)]
        else:
            projections = [(f"{p}_proj_weight", x) for p, x in zip("qkv", (q, k, v), strict=True)]
            for pname, x in projections:
                record(name, pname, 1, x.ids, "in")
                record(name, pname, 0, rows, "out")
        if mod.in_proj_bias is not None:
            record(name, "in_proj_bias", 0, np.tile(rows, 3), "out")
        for pname in ("bias_k", "bias_v"):
            if getattr(mod, pname, None) is not None:
                record(name, pname, 2, rows, "param")
        out_proj = f"{name}.out_proj"
        record(out_proj, "weight", 1, rows, "in")
        out_ids = self.fresh(mod.embed_dim)  # type: ignore[attr-defined]
        self.record_outputs(out_proj, mod.out_proj, out_ids)  # type: ignore[attr-defined]
        fixed = self.mha_fixed_heads(node)
        if fixed:
            self.pin(heads, f"{fixed} at {_where(node)}")  # type: ignore[attr-defined]
        self.mha_costs(node, name, mod, q, k, projections)
        out = _Value(out_ids, q.ndim - 1, (*q.shape[:-1], mod.embed_dim))
        self.values[node] = (OUTPUTS, [out, None], heads, "attention weights read per head")  # type: ignore[attr-defined]

    def attention_input(self, node: fx.Node, pos: int, key: str) -> _Value:
        arg = node.args[pos] if len(node.args) > pos else node.kwargs.get(key)
        x = self.tracked(arg)  # type: ignore[attr-defined]
        x = x if x is None else self.channels_last(x)  # type: ignore[attr-defined]
        if x is None or x.axis != x.ndim - 1:
            raise self.unsupported(node, f"attention {key} has no channel axis last")  # type: ignore[attr-defined]
        return x

    @staticmethod
    def mha_fixed_heads(node: fx.Node) -> str:
        """Why the heads may not be pruned here ('' if they may)."""
        mask = node.args[5] if len(node.args) > 5 else node.kwargs.get("attn_mask")
        shape = _shape(mask) if isinstance(mask, fx.Node) else None
        if shape is not None and len(shape) == 3:
            return "an attention mask given per head"
        return ""

    def mha_costs(
        self,
        node: fx.Node,
        name: str,
        mod: nn.MultiheadAttention,
        q: _Value,
        k: _Value,
        projections: list[tuple[str, _Value]],
    ) -> None:
        """MACs per sample: the projections, the two matmuls, the output projection."""
        if self.inference_modules is not None and name not in self.inference_modules:  # type: ignore[attr-defined]
            return
        batch_axis = 0 if mod.batch_first or q.ndim == 2 else 1
        length = _sequence_length(q, batch_axis)
        keys = _sequence_length(k, batch_axis) + (mod.bias_k is not None) + mod.add_zero_attn
        width = (f"{name}.out_proj", "weight", 1)  # heads * head_dim: what pruning heads shrinks
        products = self.products  # type: ignore[attr-defined]
        for i, (pname, x) in enumerate(projections):
            tokens = length if i == 0 else _sequence_length(x, batch_axis)
            products.append(ProductCost(f"{name}.{pname}", tokens, (width, (name, pname, 1))))
        products.append(ProductCost(f"{name}.matmuls", 2 * length * keys, (width,)))
        products.append(
            ProductCost(f"{name}.out_proj", length, ((f"{name}.out_proj", "weight", 0), width))
        )

    def visit_window_attention(self, node: fx.Node, name: str, mod: nn.Module) -> None:
        """Swin's (shifted) window attention on (B, H, W, C); v2 adds a per-head
        temperature and a bias MLP whose last layer has one output per head."""
        x = self.attention_input(node, 0, "x")
        qkv, proj = f"{name}.qkv", f"{name}.proj"
        inner = mod.qkv.weight.shape[0] // 3
        heads, rows = self.head_rows(mod.num_heads, inner // mod.num_heads)
        record = self.record  # type: ignore[attr-defined]
        self.head_projections(name, mod.qkv, qkv, x, rows, mod.proj, proj)
        if hasattr(mod, "logit_scale"):
            record(name, "logit_scale", 0, heads, "param")
            self.position_mlp(name, mod, heads)
        else:
            record(name, "relative_position_bias_table", 1, heads, "param")
        height, width = (x.shape[i] + (-x.shape[i] % mod.window_size[i - 1]) for i in (1, 2))
        tokens = height * width  # after padding to whole windows
        per_window = mod.window_size[0] * mod.window_size[1]
        products = self.products  # type: ignore[attr-defined]
        if self.inference_modules is None or name in self.inference_modules:  # type: ignore[attr-defined]
            products.append(ProductCost(qkv, tokens, ((qkv, "weight", 0), (qkv, "weight", 1))))
            products.append(
                ProductCost(f"{name}.matmuls", 2 * tokens * per_window, ((proj, "weight", 1),))
            )
            products.append(ProductCost(proj, tokens, ((proj, "weight", 0), (proj, "weight", 1))))
        out_ids = self.values_out(proj)
        self.values[node] = _Value(out_ids, x.ndim - 1, (*x.shape[:-1], len(out_ids)))  # type: ignore[attr-defined]

    def visit_maxvit_attention(self, node: fx.Node, name: str, mod: nn.Module) -> None:
        """MaxViT's attention within windows or grid cells: (B, G, P, D) tokens."""
        x = self.attention_input(node, 0, "x")
        qkv, merge = f"{name}.to_qkv", f"{name}.merge"
        heads, rows = self.head_rows(mod.n_heads, mod.head_dim)
        self.head_projections(name, mod.to_qkv, qkv, x, rows, mod.merge, merge)
        self.record(name, "relative_position_bias_table", 1, heads, "param")  # type: ignore[attr-defined]
        batch, groups, tokens, _ = x.shape
        for layer, path in ((mod.to_qkv, qkv), (mod.merge, merge)):
            shape = (batch, groups, tokens, layer.out_features)
            self.add_layer(path, "linear", layer.weight.shape, shape, 3, called_in=name)  # type: ignore[attr-defined]
        if self.inference_modules is None or name in self.inference_modules:  # type: ignore[attr-defined]
            factor = 2 * groups * tokens * tokens
            self.products.append(ProductCost(f"{name}.matmuls", factor, ((merge, "weight", 1),)))  # type: ignore[attr-defined]
        out_ids = self.values_out(merge)
        self.values[node] = _Value(out_ids, 3, (*x.shape[:-1], len(out_ids)))  # type: ignore[attr-defined]

    def visit_timm_attention(self, node: fx.Node, name: str, mod: nn.Module) -> None:
        """timm's self-attention on (B, N, C) tokens: a packed qkv layer, heads, `proj`.

        Optional parts: q/k norms over `head_dim` (shared by the heads, so kept
        whole), a sigmoid gate with one row per inside channel (pruned with its
        head), a norm over all heads' channels before `proj` (it mixes the
        heads: they are fixed).
        """
        x = self.attention_input(node, 0, "x")
        qkv, proj = f"{name}.qkv", f"{name}.proj"
        heads, rows = self.head_rows(mod.num_heads, mod.head_dim)
        self.head_projections(name, mod.qkv, qkv, x, rows, mod.proj, proj)
        record = self.record  # type: ignore[attr-defined]
        batch, tokens, _ = x.shape
        called = [(mod.qkv, qkv), (mod.proj, proj)]
        if mod.gate is not None:
            gate = f"{name}.gate"
            record(gate, "weight", 1, x.ids, "in")
            self.record_outputs(gate, mod.gate, rows)  # type: ignore[attr-defined]
            called.append((mod.gate, gate))
        if not isinstance(mod.norm, nn.Identity):
            for pname in ("weight", "bias"):
                if getattr(mod.norm, pname, None) is not None:
                    record(f"{name}.norm", pname, 0, rows, "norm")
            self.pin(heads, f"a norm over all heads' channels at {_where(node)}")  # type: ignore[attr-defined]
        mask = self.arg(node, 1, "attn_mask", None)  # type: ignore[attr-defined]
        mask_shape = _shape(mask) if isinstance(mask, fx.Node) else None
        if mask_shape is not None and len(mask_shape) == 4 and mask_shape[1] != 1:
            self.pin(heads, f"an attention mask given per head at {_where(node)}")  # type: ignore[attr-defined]
        for layer, path in called:
            shape = (batch, tokens, layer.out_features)
            self.add_layer(path, "linear", layer.weight.shape, shape, 2, called_in=name)  # type: ignore[attr-defined]
        if self.inference_modules is None or name in self.inference_modules:  # type: ignore[attr-defined]
            factor = 2 * tokens * tokens  # queries x keys, weights x values
            self.products.append(ProductCost(f"{name}.matmuls", factor, ((proj, "weight", 1),)))  # type: ignore[attr-defined]
        out_ids = self.values_out(proj)
        self.values[node] = _Value(out_ids, 2, (*x.shape[:-1], len(out_ids)))  # type: ignore[attr-defined]

    def head_projections(
        self,
        name: str,
        qkv_layer: nn.Linear,
        qkv: str,
        x: _Value,
        rows: np.ndarray,
        out_layer: nn.Linear,
        out: str,
    ) -> None:
        """A packed q/k/v linear layer (heads' rows) and the output projection's columns."""
        record = self.record  # type: ignore[attr-defined]
        record(qkv, "weight", 1, x.ids, "in")
        record(qkv, "weight", 0, np.tile(rows, 3), "out")
        if qkv_layer.bias is not None:
            record(qkv, "bias", 0, np.tile(rows, 3), "out")
        record(out, "weight", 1, rows, "in")
        self._out_layer = (out, out_layer)

    def values_out(self, out: str) -> np.ndarray:
        """Fresh output channels of the output projection `head_projections` recorded."""
        path, layer = self._out_layer
        assert path == out
        out_ids = self.fresh(layer.out_features)  # type: ignore[attr-defined]
        self.record_outputs(out, layer, out_ids)  # type: ignore[attr-defined]
        return out_ids

    def position_mlp(self, name: str, mod: nn.Module, heads: np.ndarray) -> None:
        """Swin v2's bias MLP: (1, 2w-1, 2w-1, 2) coordinates -> one bias per head."""
        first, last = mod.cpb_mlp[0], mod.cpb_mlp[-1]
        path = f"{name}.cpb_mlp.{len(mod.cpb_mlp) - 1}"
        self.record(path, "weight", 0, heads, "param")  # type: ignore[attr-defined]
        if last.bias is not None:
            self.record(path, "bias", 0, heads, "param")  # type: ignore[attr-defined]
        grid = tuple(mod.relative_coords_table.shape[:-1])
        for i, layer in ((0, first), (len(mod.cpb_mlp) - 1, last)):
            shape = (*grid, layer.out_features)
            self.add_layer(
                f"{name}.cpb_mlp.{i}", "linear", layer.weight.shape, shape, 3, called_in=name
            )  # type: ignore[attr-defined]

    def outputs_item(self, node: fx.Node, marker: tuple, idx: object) -> None:
        """`out[idx]` of a layer returning several outputs."""
        _, outputs, heads, why = marker
        value = (
            outputs[idx] if isinstance(idx, int) and -len(outputs) <= idx < len(outputs) else None
        )
        if value is not None:
            self.values[node] = value  # type: ignore[attr-defined]
        elif node.users:
            self.pin(heads, f"{why} at {_where(node)}")  # type: ignore[attr-defined]


def _sequence_length(x: _Value, batch_axis: int) -> int:
    """Tokens per sample of a (.., tokens, .., channels) tensor: all but batch and channels."""
    n = 1
    for i, s in enumerate(x.shape[:-1]):
        if i != batch_axis or x.ndim == 2:
            n *= s
    return n
