"""Channels a view has split across two axes: channel shuffles and radix groups.

A view such as ``x.view(B, g, C // g, H, W)`` (ShuffleNet) or
``x.reshape(B, radix, C // radix, H, W)`` (ResNeSt's split attention) spreads
the channel axis over two axes, one of them a hard-coded size. Pruning keeps
the view valid only if every block along that literal factor loses the same
positions, so those positions are tied into one unit. While split, a tensor
may be permuted, multiplied by another tensor split the same way, and
reduced or softmaxed along the literal factor (each of these mixes only tied
positions); a view or flatten joins the two axes back into one channel axis.
Size-1 axes between the two factors (``view(B, 1, radix, -1)``) are allowed.

`SplitRules` is mixed into `OpRules`; it uses the same bookkeeping
(`tie`, `opaque`, `values`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.fx as fx

from prunelab.graph.values import _ParamRef, _shape, _Value


def _literal(shape_args: Sequence[object], dim: int) -> bool:
    """True if a view's size at `dim` is a hard-coded number (not -1, not traced)."""
    return len(shape_args) > dim and isinstance(shape_args[dim], int) and shape_args[dim] != -1


def _second(x: _Value) -> int:
    """The axis of the second factor of split channels."""
    return x.axis + 1 + x.gap


class SplitRules:
    """Rules for tensors whose channels a view split across two axes."""

    def split_view(self, node: fx.Node, x: _Value, shape_args: Sequence[object]) -> bool:
        """A view splitting the channel axis in two, one factor a literal; False if not one."""
        out = _shape(node)
        a, c = x.axis, len(x.ids)
        if out is None or len(shape_args) != len(out) or tuple(out[:a]) != x.shape[:a]:
            return False
        end, size = a, 1  # the output axes whose sizes multiply to the channel count
        while end < len(out) and size < c:
            size *= out[end]
            end += 1
        factors = [i for i in range(a, end) if out[i] != 1]
        if (
            size != c
            or len(factors) != 2
            or math.prod(out[end:]) != math.prod(x.shape[a + 1 :])
            or _literal(shape_args, factors[0]) == _literal(shape_args, factors[1])
        ):
            return False
        first, second = factors
        n0, n1 = out[first], out[second]
        fixed = 0 if _literal(shape_args, first) else 1
        grid = x.ids.reshape(n0, n1)
        blocks = grid if fixed == 0 else grid.T
        for k in range(1, len(blocks)):
            self.tie(blocks[0], blocks[k])
        self.values[node] = _Value(x.ids, first, out, (n0, n1, fixed), second - first - 1)
        return True

    def merge_view(self, node: fx.Node, x: _Value, literal: bool) -> None:
        """A view joining the two axes of split channels back into one."""
        out = _shape(node)
        assert out is not None and x.split is not None
        a = x.axis
        if not (
            tuple(out[:a]) == x.shape[:a]
            and len(out) > a
            and out[a] == len(x.ids)
            and tuple(out[a + 1 :]) == x.shape[_second(x) + 1 :]
        ):
            raise self.unsupported(node, f"reshape {x.shape} -> {out} regroups split channels")
        if literal:
            self.opaque(node, "view with a hard-coded channel count")
        else:
            self.values[node] = _Value(x.ids, a, out)

    def split_flatten(self, node: fx.Node, x: _Value, start: int, end: int) -> None:
        if (start, end) != (x.axis, _second(x)):
            raise self.unsupported(node, "flatten regroups channels split across two axes")
        self.values[node] = _Value(x.ids, x.axis, _shape(node) or x.shape)

    def split_permute(self, node: fx.Node, x: _Value, order: list[int]) -> None:
        out = _shape(node)
        assert out is not None and x.split is not None
        first, second = order.index(x.axis), order.index(_second(x))
        lo, hi = min(first, second), max(first, second)
        if any(out[i] != 1 for i in range(lo + 1, hi)):
            raise self.unsupported(node, "permute separates channels split across two axes")
        n0, n1, fixed = x.split
        if first < second:
            self.values[node] = _Value(x.ids, first, out, x.split, hi - lo - 1)
        else:  # the two factors swap: the channel order is transposed
            ids = x.ids.reshape(n0, n1).T.flatten()
            self.values[node] = _Value(ids, second, out, (n1, n0, 1 - fixed), hi - lo - 1)

    def split_reduce(self, node: fx.Node, x: _Value, dims: list[int], keepdim: bool) -> None:
        """A sum or mean; along the literal factor it adds tied channels (ResNeSt's radix sum)."""
        out = _shape(node)
        assert out is not None and x.split is not None
        n0, n1, fixed = x.split
        along = [f for f, axis in enumerate((x.axis, _second(x))) if axis in dims]
        if along and along != [fixed]:
            self.opaque(node, "reduction over channels")
            return

        def moved(axis: int) -> int:
            return axis if keepdim else axis - sum(d < axis for d in dims)

        if not along:
            gap = moved(_second(x)) - moved(x.axis) - 1
            self.values[node] = _Value(x.ids, moved(x.axis), out, x.split, gap)
            return
        grid = x.ids.reshape(n0, n1)
        kept, axis = (grid[0], _second(x)) if fixed == 0 else (grid[:, 0], x.axis)
        self.values[node] = _Value(kept, moved(axis), out)

    def split_softmax(self, node: fx.Node, x: _Value, dim: int) -> None:
        """Softmax along the literal factor mixes tied channels only (ResNeSt's radix softmax)."""
        assert x.split is not None
        factor = {x.axis: 0, _second(x): 1}.get(dim)
        if factor is not None and factor != x.split[2]:
            self.opaque(node, "softmax over channels")
        else:
            self.passthrough(node, x)

    def split_binary(self, node: fx.Node, operands: list[object], out: tuple[int, ...]) -> None:
        """An elementwise op on tensors whose channels are split the same way."""
        values = [v for a in operands if (v := self.tracked(a)) is not None]
        nodes = [a for a in operands if isinstance(a, fx.Node)]
        axes = {v.axis + len(out) - v.ndim for v in values}
        layout = {(v.split, v.gap, len(v.ids)) for v in values}
        if (
            len(axes) != 1
            or len(layout) != 1
            or any(isinstance(self.values.get(a), _ParamRef) for a in nodes)
        ):
            raise self.unsupported(node, "operands split their channels differently")
        first = values[0]
        for v in values[1:]:
            self.tie(first.ids, v.ids)
        self.values[node] = _Value(first.ids, axes.pop(), out, first.split, first.gap)
