"""What the tracer attaches to fx nodes, and how it names nodes in errors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch.fx as fx

from prunelab.graph.groups import Role


@dataclass
class _Value:
    """Channel variables of a traced tensor along its channel axis."""

    ids: np.ndarray
    axis: int
    shape: tuple[int, ...]
    # Channels spread over axes (axis, axis + 1) of sizes (n0, n1) by a view such as a
    # channel shuffle's; `fixed` is the factor (0 or 1) the view gave as a literal.
    split: tuple[int, int, int] | None = None
    gap: int = 0  # size-1 axes between the two factors of split channels

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass
class _ParamRef:
    """A parameter or buffer used directly in forward (a get_attr node)."""

    module: str
    name: str
    shape: tuple[int, ...]


@dataclass
class _Record:
    module: str
    param: str
    dim: int
    positions: np.ndarray
    ids: np.ndarray
    role: Role


def _where(node: fx.Node) -> str:
    """The module path a node belongs to, for error messages."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        return f"{path} ({node.name})"
    return node.name


def _op_name(node: fx.Node) -> str:
    t = node.target
    if node.op == "call_method":
        return f"Tensor.{t}"
    if node.op == "call_function":
        mod = getattr(t, "__module__", None) or ""
        name = getattr(t, "__name__", str(t))
        return f"{mod}.{name}" if mod and mod != "_operator" else f"operator.{name}"
    return str(t)


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    return node.meta.get("prunelab_shape")  # set by the tracer's shape pass for tensors
