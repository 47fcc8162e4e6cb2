"""Depth pruning: find residual blocks that can be removed, and replace them by identity.

A block is removable when its output is `post(x + branch(x))`: the shortcut is
the identity (no projection, no stride) and `post` is nothing, ReLU or ReLU6.
Replacing it by `nn.Identity` then gives the network built without that block:

- no `post` (MobileNetV2 inverted residuals, pre-activation Wide ResNet blocks):
  the block with a zero branch computes exactly `x`, so identity is exact;
- `post` = ReLU (post-activation ResNets, ours and torchvision's): the block
  with a zero branch computes relu(x), which is `x` because every block's
  input is the output of a ReLU (the stem's, or the previous block's);
  `Block.exact` checks this on an example input when one is given;
- `post` = ReLU6: exact when 0 <= x <= 6, also checked on the example input.

Blocks are found by tracing each candidate submodule with torch.fx and
matching that output pattern, so any architecture written this way works; a
submodule fx cannot trace is simply not a candidate. Only outermost blocks
are reported (a removable block inside a removable block is not listed).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from prunelab.errors import ConfigError

__all__ = ["Block", "analyze_block", "find_removable_blocks", "remove_blocks", "zero_branches"]

_ADDS = (operator.add, operator.iadd, torch.add)
_RELU_FUNCS = {torch.relu: "relu", F.relu: "relu", torch.relu_: "relu", F.relu6: "relu6"}
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True)
class Block:
    """A removable residual block.

    `post` is the op applied after the residual add ("relu", "relu6" or None);
    `exact` says whether replacing the block by identity equals zeroing its
    branch on the example input (None when no input was given).
    """

    name: str
    kind: str
    post: str | None
    exact: bool | None = None


def _post_op(gm: fx.GraphModule, node: fx.Node) -> str | bool | None:
    """The activation `node` applies to its single input; None for identity, False otherwise."""
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        if isinstance(mod, nn.ReLU):
            return "relu"
        if isinstance(mod, nn.ReLU6):
            return "relu6"
        if isinstance(mod, nn.Identity):
            return None
        return False
    if node.op == "call_function" and node.target in _RELU_FUNCS:
        return _RELU_FUNCS[node.target]
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return "relu"
    return False


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _ADDS:
        return "alpha" not in node.kwargs and len(node.args) == 2
    return node.op == "call_method" and node.target in ("add", "add_") and len(node.args) == 2


def analyze_block(module: nn.Module) -> tuple[str | None, str]:
    """Match `post(x + branch(x))`; returns (post op, "") or (None, reason it is not a block)."""
    try:
        gm = fx.symbolic_trace(module)
    except Exception as exc:  # fx fails in many ways on arbitrary code; not a block then
        return None, f"torch.fx cannot trace it ({type(exc).__name__})"
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return None, f"it takes {len(inputs)} inputs, a block takes one"
    x = inputs[0]
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    post: str | None = None
    while isinstance(out, fx.Node) and len(out.args) == 1 and isinstance(out.args[0], fx.Node):
        op = _post_op(gm, out)
        if op is False:
            break
        if op is not None:
            post = op if post is None or post == op else "relu6"
        out = out.args[0]
    if not isinstance(out, fx.Node) or not _is_add(out):
        return None, "its output is not a residual addition x + branch(x)"
    a, b = out.args
    if x not in (a, b) or a is b:
        return None, "its shortcut is not the identity (the input is not added back unchanged)"
    return post, ""


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Submodules that could be blocks: not the root, not containers, holding a conv."""
    out = []
    for name, m in model.named_modules():
        if not name or isinstance(m, _CONTAINERS) or not any(True for _ in m.children()):
            continue
        if any(isinstance(c, nn.modules.conv._ConvNd) for c in m.modules()):
            out.append((name, m))
    return out


def _inside(name: str, parents: Iterable[str]) -> bool:
    return any(name.startswith(p + ".") for p in parents)


def find_removable_blocks(
    model: nn.Module, example_input: torch.Tensor | None = None
) -> list[Block]:
    """The model's removable residual blocks, in module order (= forward order for stages).

    With `example_input`, blocks whose output shape differs from their input
    shape are dropped (a broadcasting add) and `exact` is filled in.
    """
    found: list[Block] = []
    for name, m in _candidates(model):
        if _inside(name, (b.name for b in found)):
            continue
        post, why = analyze_block(m)
        if not why:
            found.append(Block(name, type(m).__name__, post))
    if example_input is None or not found:
        return found
    seen = _block_io(model, [b.name for b in found], example_input)
    checked = []
    for b in found:
        if b.name not in seen:  # never called on this input: leave it alone
            continue
        x, y = seen[b.name]
        if x.shape != y.shape:
            continue
        checked.append(Block(b.name, b.kind, b.post, _identity_exact(b.post, x)))
    return checked


def _identity_exact(post: str | None, x: torch.Tensor) -> bool:
    if post is None:
        return True
    if post == "relu":
        return bool((x >= 0).all())
    return bool(((x >= 0) & (x <= 6)).all())


@torch.no_grad()
def _block_io(
    model: nn.Module, names: list[str], example_input: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str):
        def fn(_m: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
                seen.setdefault(name, (args[0].detach(), output.detach()))

        return fn

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    was_training = model.training
    try:
        model.eval()
        model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


def named_to_remove(model: nn.Module, names: Iterable[str]) -> list[tuple[str, nn.Module]]:
    """(name, module) for each distinct name, in order; ConfigError for a name that is absent."""
    found = []
    for name in dict.fromkeys(names):
        try:
            found.append((name, model.get_submodule(name)))
        except AttributeError:
            raise ConfigError(f"no module named {name!r} to remove") from None
    return found


def remove_blocks(model: nn.Module, names: Iterable[str], inplace: bool = False) -> nn.Module:
    """Replace the named residual blocks by `nn.Identity` (a copy unless `inplace`).

    Raises ConfigError naming the first block that does not exist or is not
    removable (its shortcut is not the identity), before anything changes.
    The result saves and loads with `prunelab.save` / `prunelab.load`.
    """
    found = named_to_remove(model, names)
    names = [name for name, _ in found]
    for name, m in found:
        if not name or isinstance(m, nn.Identity):
            raise ConfigError(f"{name!r} is not a block (the whole model, or already removed)")
        _, why = analyze_block(m)
        if why:
            raise ConfigError(f"{name!r} ({type(m).__name__}) is not a removable block: {why}")
    target = model if inplace else copy.deepcopy(model)
    for name in names:
        target.set_submodule(name, nn.Identity())
    return target


_NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


@torch.no_grad()
def zero_branches(
    model: nn.Module, names: Iterable[str], example_input: torch.Tensor
) -> nn.Module:
    """A copy of `model` whose named blocks keep their modules but add a zero branch.

    The masked counterpart of `remove_blocks`: the last norm layer of each
    block (in module order; the branch's closing BN in the zoo's and
    torchvision's blocks) gets scale and shift 0, so the block computes
    post(x). Checked on `example_input`: ConfigError names a block whose
    branch does not end in that norm layer.
    """
    names = list(dict.fromkeys(names))
    target = copy.deepcopy(model).eval()
    for name in names:
        norms = [m for m in target.get_submodule(name).modules() if isinstance(m, _NORMS)]
        if not norms or norms[-1].weight is None:
            raise ConfigError(f"block {name!r} has no affine norm layer to zero its branch with")
        norms[-1].weight.zero_()
        norms[-1].bias.zero_()
    posts = {b.name: b.post for b in find_removable_blocks(model)}
    for name, (x, y) in _block_io(target, names, example_input).items():
        post = {"relu": F.relu, "relu6": F.relu6}.get(posts.get(name) or "", lambda t: t)
        if not torch.allclose(y, post(x), rtol=1e-5, atol=1e-6):
            raise ConfigError(f"block {name!r}: zeroing its last norm layer does not zero its "
                              "branch")  # fmt: skip
    return target
