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

from prunelab.errors import UnsupportedModelError
from prunelab.graph.channel_analysis import ChannelAnalysis
from prunelab.graph.groups import ChannelGraph
from prunelab.graph.op_tables import _EXTRA_LEAVES
from prunelab.layers.timm_attention import is_timm_attention
from prunelab.models.detection_core import tensor_program


class _Tracer(fx.Tracer):
    """fx tracer that keeps the usual leaves (torch.nn modules) plus user leaves."""

    def __init__(self, leaves: tuple[type, ...] = ()) -> None:
        super().__init__()
        self._extra_leaves = (*_EXTRA_LEAVES, *leaves)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, self._extra_leaves) or _inherits_torch_layer(m) or is_timm_attention(m):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward, args, kwargs):  # type: ignore[no-untyped-def]
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if not hasattr(self, "failed_in"):  # the innermost module: where tracing stopped
                self.failed_in = f"{self.path_of_module(m)} ({type(m).__name__})"
            raise


def _inherits_torch_layer(m: nn.Module) -> bool:
    """A user subclass of a torch.nn layer that keeps its forward: the same layer."""
    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    if isinstance(m, containers) or type(m).__module__.startswith("torch."):
        return False
    for base in type(m).__mro__[1:]:
        if base.__module__.startswith("torch.nn.") and base is not nn.Module:
            return type(m).forward is base.forward
    return False


def _propagate_shapes(model: nn.Module, graph: fx.Graph, inputs: tuple[torch.Tensor, ...]) -> None:
    """Run the traced graph on the model's own modules and note each tensor's shape.

    A plain loop instead of fx.Interpreter (or a GraphModule plus ShapeProp): no
    code generation, no attribute copies, no per-node context managers, so the
    pass costs little more than the forward itself. Values are dropped after their
    last use, so peak memory stays that of a normal forward.
    """
    modules = dict(model.named_modules())
    last_use: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        for used in node.all_input_nodes:
            last_use[used] = node
    dying: dict[fx.Node, list[fx.Node]] = {}
    for used, user in last_use.items():
        dying.setdefault(user, []).append(used)
    env: dict[fx.Node, object] = {}
    given = iter(inputs)

    def load(a: object) -> object:
        return fx.node.map_arg(a, env.__getitem__)

    for node in graph.nodes:
        op, target = node.op, node.target
        if op == "placeholder":
            out = next(given, node.args[0] if node.args else None)
        elif op == "get_attr":
            out = model
            for part in str(target).split("."):
                out = getattr(out, part)
        elif op == "call_module":
            out = modules[str(target)](*load(node.args), **load(node.kwargs))
        elif op == "call_function":
            out = target(*load(node.args), **load(node.kwargs))
        elif op == "call_method":
            obj, *rest = load(node.args)
            out = getattr(obj, str(target))(*rest, **load(node.kwargs))
        else:  # output
            break
        env[node] = out
        if isinstance(out, torch.Tensor):
            node.meta["prunelab_shape"] = tuple(out.shape)
        for done in dying.get(node, ()):
            env.pop(done, None)


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
    tracer cannot prune through. The model is not modified. Of a torchvision
    detection model, the tensor program (backbone, FPN, heads) is traced and the
    box logic left alone (`prunelab.models.detection_core`).
    """
    model = tensor_program(model)
    modules = dict(model.named_modules())
    names = {id(m): n for n, m in modules.items()}
    ignored = {names.get(id(i), "") if isinstance(i, nn.Module) else str(i) for i in ignore}
    unknown = ignored - set(names.values())
    if unknown:
        raise KeyError(f"ignore names modules the model does not have: {sorted(unknown)}")
    was_training = model.training
    if was_training:  # switching modes walks every module: only when needed
        model.eval()
    try:
        tracer = _Tracer(leaves)
        try:
            graph = tracer.trace(model)
        except Exception as exc:  # fx raises many kinds; turn all into one clear error
            where = getattr(tracer, "failed_in", type(model).__name__)
            first = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""
            raise UnsupportedModelError(
                "python control flow", where,
                f"torch.fx cannot trace it ({first or type(exc).__name__}); rewrite that forward "
                "without Python control flow on tensors, or pass its class in leaves= if "
                "prunelab has a rule for it",
            ) from exc
        inference_modules = _called_modules(graph)
        training_only = _training_only_modules(modules, inference_modules)
        if training_only:
            graph = _training_graph(model, leaves, training_only)
        inputs = example_input if isinstance(example_input, tuple) else (example_input,)
        try:
            with torch.no_grad():
                _propagate_shapes(model, graph, inputs)
        except Exception as exc:
            hint = (
                f" (the branches it runs only in training, {training_only[0]}..., need an "
                "example input as large as training uses)"
                if training_only
                else ""
            )
            raise UnsupportedModelError(
                "forward",
                type(model).__name__,
                f"running the traced model failed: {' '.join(str(exc).split())}{hint}",
            ) from exc
        analysis = ChannelAnalysis(graph, model, ignored, inference_modules)
        analysis.run()
        param_shapes, buffer_keys = _tensor_shapes(modules)
        groups = analysis.build(param_shapes)
    finally:
        if was_training:
            model.train()
    return ChannelGraph(
        groups=groups,
        layers=analysis.layers,
        param_shapes=param_shapes,
        input_shape=tuple(inputs[0].shape),
        module_types={n: type(m) for n, m in modules.items()},
        buffer_keys=buffer_keys,
        products=analysis.products,
    )


def _called_modules(graph: fx.Graph) -> set[str]:
    """Modules the graph calls, or whose tensors it reads."""
    called = set()
    for node in graph.nodes:
        if node.op == "call_module":
            called.add(str(node.target))
        elif node.op == "get_attr":
            called.add(str(node.target).rpartition(".")[0])
    return called


def _training_only_modules(modules: dict[str, nn.Module], called: set[str]) -> list[str]:
    """Modules holding tensors that inference never uses (GoogLeNet's aux heads)."""
    return [
        name
        for name, m in modules.items()
        if name not in called and any(p is not None for p in m._parameters.values())
    ]


def _training_graph(model: nn.Module, leaves: tuple[type, ...], unused: list[str]) -> fx.Graph:
    """The graph of what the model runs in training.

    Branches that run only in training (auxiliary classifiers) read the same
    channels as the rest, so they must be in the groups, or a pruned model
    breaks as soon as it trains. Costs still count only the inference layers.
    """
    model.train()
    try:
        return _Tracer(leaves).trace(model)
    except Exception as exc:  # fx raises many kinds; a half-pruned aux head would break training
        raise UnsupportedModelError(
            "python control flow",
            type(model).__name__,
            f"{unused[0]} runs only in training and the training forward cannot be traced: "
            + " ".join(str(exc).split()),
        ) from exc
    finally:
        model.eval()


def _tensor_shapes(
    modules: dict[str, nn.Module],
) -> tuple[dict[tuple[str, str], tuple[int, ...]], frozenset[tuple[str, str]]]:
    """Shapes of every parameter and non-scalar buffer, and which keys are buffers."""
    shapes: dict[tuple[str, str], tuple[int, ...]] = {}
    buffers = []
    for mname, mod in modules.items():
        for pname, p in mod._parameters.items():
            if p is not None:
                shapes[(mname, pname)] = tuple(p.shape)
        for bname, b in mod._buffers.items():
            if b is not None:
                buffers.append((mname, bname))
                if b.dim() > 0:
                    shapes[(mname, bname)] = tuple(b.shape)
    return shapes, frozenset(buffers)
