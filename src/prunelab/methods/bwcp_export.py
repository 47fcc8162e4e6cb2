"""BWCP export: fold whitening into the convolutions, drop masked channels, get a plain model.

A BW layer in evaluation mode is an affine map of its input, y = m ⊙ (A x + b)
with A block-diagonal (`BatchWhitening2d.affine`) and m the hard channel mask.
Its input is the output of one convolution, so A goes into that
convolution's filters (W' = A W) and the shift b into a BatchNorm2d: a
convolution without a bias never gains one, and the model keeps the zoo
architecture, so `prunelab.save`/`load` rebuild it from its recipe. That
BatchNorm2d carries the statistics the folded convolution's output z = A x
has by the BW layer's running moments (mean A μ, variance diag(A Σ Aᵀ)), with
weight √(var + ε) and bias b + mean: in evaluation it adds b, as the BW layer
did, and in training (batch statistics ≈ those) it still computes about
z + b, so the exported model can be fine-tuned (BWCP*) from where it stands.
`bn_stats="identity"` keeps the earlier export (running mean 0, variance
1 − ε, weight 1): the same evaluation map, but in training mode it
normalises z to unit variance and subtracts its mean a second time, which
cost the 40-epoch BWCP* run 17 points of train top-1 in its first fine-tune
epoch (bench/RESULTS.md, the BWCP finding). Masked
channels then output exactly zero and the engine removes them physically.
A pre-activation norm layer (BN -> ReLU -> conv) has no convolution of its
own to fold into; it becomes a `SelectedNorm2d` (`bwcp_preact`).

`finish` is the method's last step: settle the hard masks (moving the
threshold when a cost target was missed), export, check the exported model
against the masked one and collect the run's details.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn as nn

from prunelab.errors import PrunelabError, UnsupportedModelError
from prunelab.graph import ChannelGraph, Plan, prune, trace
from prunelab.graph.cost import base_cost
from prunelab.layers import BatchWhitening2d
from prunelab.methods.base import PruneResult, PruneTask
from prunelab.methods.bwcp_preact import (
    LeafTracer,
    activated_consumers,
    describe_preact,
    export_preact,
    group_keep,
    install_preact,
    placeholder,
)
from prunelab.methods.finetune import accuracy, batches
from prunelab.metrics import count

if TYPE_CHECKING:
    from prunelab.methods.bwcp import BWCPCallback, BWCPOptions, ChannelGates

__all__ = [
    "BN_STATS",
    "carry_statistics",
    "conv_bn_pairs",
    "finish",
    "fold_and_prune",
    "norms_added_together",
    "split_norms",
    "threshold_for_target",
    "unit_masks_from_channels",
]


_NORMS = (nn.BatchNorm2d, BatchWhitening2d)


def conv_bn_pairs(model: nn.Module) -> dict[str, str]:
    """Every BatchNorm2d (or BatchWhitening2d) of `model` -> the convolution feeding it.

    BWCP folds each whitening layer into the convolution before it, so every
    norm layer must be called once, directly on the output of a convolution
    that feeds nothing else (conv-BN models: CIFAR ResNets, VGG, MobileNetV2,
    torchvision ResNets). Pre-activation norm layers (BN before the conv) raise
    UnsupportedModelError naming the layer; `split_norms` accepts them.
    """
    pairs, preact = split_norms(model)
    if preact:
        raise UnsupportedModelError(
            "norm layer not right after a convolution",
            next(iter(preact)),
            "bwcp folds each whitening layer into the convolution that feeds it "
            "(conv -> BN, the conv used only there, the BN called once)",
        )
    return pairs


def split_norms(model: nn.Module) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The conv-BN pairs (norm -> its convolution) and the pre-activation norm layers.

    A pre-activation norm layer (-> its consumers) is one whose input is not a
    convolution's alone and whose output reaches only convolutions or linear
    layers through channel-wise steps (`bwcp_preact.activated_consumers`).
    Any other norm layer raises UnsupportedModelError naming it.
    """
    norms = _NORMS
    mods = dict(model.named_modules())
    try:
        graph = LeafTracer().trace(model)
    except Exception as exc:  # fx raises many kinds
        raise UnsupportedModelError(
            "python control flow", type(model).__name__, f"bwcp: torch.fx cannot trace it: {exc}"
        ) from exc
    pairs: dict[str, str] = {}
    preact: dict[str, list[str]] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), norms):
            continue
        name = str(node.target)
        src = node.args[0] if node.args else None
        after_conv = (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and isinstance(mods.get(src.target), nn.Conv2d)
            and len(src.users) == 1
        )
        users = None if after_conv else activated_consumers(node, mods)
        if name in pairs or name in preact or not (after_conv or users):
            raise UnsupportedModelError(
                "norm layer neither right after a convolution nor right before one",
                name,
                "bwcp folds a whitening layer into the convolution that feeds it (conv -> BN, "
                "the conv used only there) or masks the inputs of the layers it feeds "
                "(BN -> ReLU -> conv), the BN called once",
            )
        if after_conv:
            pairs[name] = str(src.target)
        else:
            assert users is not None
            preact[name] = users
    missing = sorted(
        n for n, m in mods.items() if isinstance(m, norms) and n not in pairs and n not in preact
    )
    if missing:
        raise UnsupportedModelError(
            "norm layer outside the traced graph", missing[0], "bwcp needs every BN in forward"
        )
    return pairs, preact


_ADDS = {operator.add, operator.iadd, torch.add}


def norms_added_together(model: nn.Module) -> list[set[str]]:
    """Sets of norm layers whose outputs meet at one residual addition, each on its own.

    A norm "reaches" an add when its output passes only single-input,
    single-use steps (an activation, say) on the way: a projection shortcut's
    BN and its block's last BN form a set; a stream that also feeds the next
    block's convolution (an identity shortcut) does not reach the add alone.
    """
    mods = dict(model.named_modules())
    graph = LeafTracer().trace(model)
    reached: dict[fx.Node, set[str]] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), _NORMS):
            continue
        cur = node
        while len(cur.users) == 1:
            nxt = next(iter(cur.users))
            is_add = (nxt.op == "call_function" and nxt.target in _ADDS) or (
                nxt.op == "call_method" and nxt.target in ("add", "add_"))
            if is_add:
                reached.setdefault(nxt, set()).add(str(node.target))
                break
            if nxt.op not in ("call_function", "call_method", "call_module") or len(
                    nxt.all_input_nodes) != 1:
                break
            if nxt.op == "call_module" and isinstance(mods.get(nxt.target), (nn.Conv2d, nn.Linear)):
                break
            cur = nxt
    return [names for names in reached.values() if len(names) > 1]


def unit_masks_from_channels(
    graph: ChannelGraph, channel_masks: Mapping[str, torch.Tensor]
) -> dict[int, torch.Tensor]:
    """Per-group unit masks from per-norm-layer channel masks (a unit stays if all keep it)."""
    keep: dict[int, torch.Tensor] = {}
    for name, mask in channel_masks.items():
        group = graph.group_of(name)
        unit_keep = keep.setdefault(group.index, torch.ones(group.size, dtype=torch.bool))
        for m in group.members:
            if m.module == name and m.role == "norm" and m.param == "weight":
                unit_keep[m.units] &= mask.bool().cpu()[m.positions]
    return keep


def _block_diag_times(a: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(blockdiag(A) @ rows) for A (groups, g, g) and rows (C, ...)."""
    groups, g, _ = a.shape
    flat = rows.reshape(groups, g, -1)
    return (a @ flat).reshape(rows.shape)


BN_STATS = ("matched", "identity")


def _folded_bn(
    layer: BatchWhitening2d,
    a: torch.Tensor,
    shift: torch.Tensor,
    conv_bias: torch.Tensor | None,
    bn_stats: str = "matched",
) -> nn.BatchNorm2d:
    """A BatchNorm2d computing z + shift in evaluation mode, z = A x the folded conv's output.

    "matched": running statistics are z's under the BW layer's running moments of x
    (minus the conv bias the fold removes), so training-mode batch statistics agree
    with them; "identity": mean 0, variance 1 − ε, weight 1 (agrees in evaluation only).
    """
    ref = layer.weight
    bn = nn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum)
    bn.to(device=ref.device, dtype=ref.dtype)
    bn.num_batches_tracked.copy_(layer.num_batches_tracked)
    if bn_stats == "identity":
        bn.weight.fill_(1.0)
        bn.bias.copy_(shift)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - layer.eps)  # (x - 0) / sqrt(1 - eps + eps) = x
        return bn
    groups, g = layer.groups, layer.group_size
    mean_x = layer.running_mean if conv_bias is None else layer.running_mean - conv_bias
    std = layer.running_var.clamp_min(0.0).sqrt().view(groups, g)
    cov_x = std.unsqueeze(2) * layer.running_corr * std.unsqueeze(1)  # Σ per group
    mean_z = (a @ mean_x.view(groups, g, 1)).reshape(-1)
    var_z = torch.diagonal(a @ cov_x @ a.transpose(1, 2), dim1=1, dim2=2).reshape(-1)
    var_z = var_z.clamp_min(0.0)
    carry_statistics(bn, shift, mean_z, var_z)
    return bn


@torch.no_grad()
def carry_statistics(
    bn: nn.BatchNorm2d, shift: torch.Tensor, mean: torch.Tensor, var: torch.Tensor
) -> None:
    """Make `bn` compute z + shift in evaluation while holding z's statistics (mean, var)."""
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(var)
    bn.weight.copy_((var + bn.eps).sqrt())  # undoes the normalisation by those statistics
    bn.bias.copy_(shift + mean)


@torch.no_grad()
def fold_and_prune(
    model: nn.Module,
    pairs: Mapping[str, str],
    channel_masks: Mapping[str, torch.Tensor],
    example_input: torch.Tensor,
    preact: Mapping[str, list[str]] | None = None,
    shortcuts: bool = True,
    bn_stats: str = "matched",
) -> nn.Module:
    """The plain, physically pruned model computing what `model` computes in eval mode.

    `model` must carry no mask hooks (the masks are given here instead):
    `channel_masks[name]` is the 0/1 keep mask of norm layer `name` (missing:
    keep all). BW layers are folded into their convolutions; plain BN layers
    get the mask multiplied into their scale and shift. Pre-activation norm
    layers (`preact`: name -> its consumers) become `SelectedNorm2d` layers
    reading only what they keep (`bwcp_preact`), and a produced channel no
    layer reads is removed (`shortcuts=False`: not from residual streams).
    `bn_stats` sets the folded BatchNorm2d's statistics (`_folded_bn`). The
    input model is not changed.
    """
    out = copy.deepcopy(model).eval()
    preact = dict(preact or {})
    exports = {}
    for name in preact:
        layer = out.get_submodule(name)
        mask = channel_masks.get(name)
        mask = torch.ones(layer.weight.shape[0]) if mask is None else mask.cpu().float()
        exports[name] = (export_preact(layer, mask), mask)
        out.set_submodule(name, placeholder(layer))
    for bn_name, conv_name in pairs.items():
        layer = out.get_submodule(bn_name)
        mask = channel_masks.get(bn_name)
        scale = None if mask is None else mask.to(layer.weight.dtype).to(layer.weight.device)
        if isinstance(layer, BatchWhitening2d):
            conv = out.get_submodule(conv_name)
            a, shift = layer.affine(scale)
            if layer.group_size > 1 and conv.groups != 1:
                raise UnsupportedModelError(
                    "whitening after a grouped convolution", bn_name, "use group_size 1 there"
                )
            conv.weight.copy_(_block_diag_times(a, conv.weight))
            bias = None if conv.bias is None else conv.bias.clone()
            if conv.bias is not None:  # fold the bias through A into the shift
                shift = shift + _block_diag_times(a, conv.bias)
                conv.bias.zero_()
            out.set_submodule(bn_name, _folded_bn(layer, a, shift, bias, bn_stats))
        elif scale is not None:
            layer.weight.mul_(scale)
            layer.bias.mul_(scale)
    out.eval()  # the new BatchNorm2d layers start in training mode
    if not channel_masks and not preact:
        return out
    graph = trace(out, example_input)
    keep: dict = unit_masks_from_channels(
        graph, {k: v for k, v in channel_masks.items() if k not in preact})
    if preact:
        infos = describe_preact(out, graph, preact, example_input)
        for name, info in infos.items():
            layer = model.get_submodule(name)
            info.whiten_group = layer.group_size if isinstance(layer, BatchWhitening2d) else 0
        masks = {**keep, **{n: m for n, (_, m) in exports.items()}}
        keep = {g: k.bool() for g, k in group_keep(graph, infos, masks, shortcuts).items()}
    plan = Plan.from_masks(graph, {g: k for g, k in keep.items() if not bool(k.all())})
    pruned = prune(out, plan).eval()
    install_preact(pruned, graph, plan_masks(plan), exports, preact)
    return pruned.eval()


def plan_masks(plan: Plan) -> dict[int, torch.Tensor]:
    """The plan's kept units as bool masks per group."""
    return {g: plan.keep_mask(g) for g in plan.keep}


def threshold_for_target(gates: ChannelGates, metric: str, target: float) -> float:
    """The hard-mask threshold whose cost is closest to `target` (bisection; cost falls with it)."""
    lo, hi = 1e-6, 1.0 - 1e-6
    best, best_gap = 0.5, abs(gates.hard_ratio(metric, 0.5) - target)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        ratio = gates.hard_ratio(metric, mid)
        if abs(ratio - target) < best_gap:
            best, best_gap = mid, abs(ratio - target)
        if ratio > target:
            lo = mid
        else:
            hi = mid
    return best


def finish(
    task: PruneTask,
    model: nn.Module,
    gates: ChannelGates,
    cb: BWCPCallback,
    opts: BWCPOptions,
    history: list[dict[str, Any]],
    final: dict[str, Any],
    aim: float | None = None,
) -> PruneResult:
    """Fix the hard masks (moving the threshold if the target was missed), export, check.

    `aim`: the cost the masks must meet in `task.metric` when it is not the
    task's target (a latency table's error-corrected aim).
    """
    model.eval()
    x = task.example_input
    goal = task.target if aim is None else aim
    controller_ratio = gates.hard_ratio(task.metric)
    info: dict[str, Any] = {"controller_ratio": controller_ratio, "threshold": 0.5}
    top1 = final.get("top1")
    off = abs(controller_ratio / goal - 1.0) > opts.tolerance
    if opts.target_control and opts.enforce_target and off:
        gates.threshold = threshold_for_target(gates, task.metric, goal)
        info["threshold"] = gates.threshold
    info["final_ratio"] = gates.hard_ratio(task.metric, gates.threshold)
    recal = opts.recalibrate_batches
    if opts.sampling == "none":  # no masks in training: also report the unmasked network
        if recal:
            gates.recalibrate(task.data.train, recal, masked=False)
        gates.enabled = False
        info["unmasked_top1"] = accuracy(model, task.data.test)
        gates.enabled = True
    if recal:  # the statistics of the final hard masks, which stay fixed for the export
        gates.recalibrate(task.data.train, recal)
    if recal or info["threshold"] != 0.5:
        top1 = accuracy(model, task.data.test)
    check = next(iter(batches(task, 1, "test")), (x, None))[0][:32]
    unit_masks = gates.evaluation_masks()
    channel_masks = {k: v.cpu() for k, v in gates.channel_masks(unit_masks).items()}
    probs = {k: v.detach().cpu() for k, v in gates.probabilities().items()}
    probs_bn = {k: v.detach().cpu() for k, v in gates.probabilities(whitened=False).items()}
    with torch.no_grad():
        reference = model(check)
    gates.remove()
    pruned = fold_and_prune(
        model, gates.pairs, channel_masks, x,
        {n: p.consumers for n, p in gates.preact.items()}, gates.shortcuts, opts.export_bn,
    )  # fmt: skip
    with torch.no_grad():
        diff = float((pruned(check) - reference).abs().max())
    if diff > 1e-4 * max(1.0, float(reference.abs().max())):
        raise PrunelabError(f"bwcp: exported model differs from the masked one by {diff:.3g}")
    small = count(pruned, x)
    base = base_cost(gates.graph)
    info.update(
        target=task.target if opts.target_control else None,
        metric=task.metric,
        eval_top1=top1,
        achieved_flops=small.flops / base.flops,
        achieved_params=small.params / base.params,
        expected_flops=gates.expected_ratio("flops"),
        export_max_diff=diff,
        export_reference_max=float(reference.abs().max()),
        lambda_scale=cb.scale,
        lambda1=cb.scale * opts.lambda1,
        lambda2=cb.scale * opts.lambda2,
        control_timeline=cb.timeline,
        kept={_mask_name(gates, g): int(m.sum()) for g, m in unit_masks.items()},
        sizes={_mask_name(gates, g): int(m.numel()) for g, m in unit_masks.items()},
        unmasked_layers=gates.skipped,
        probabilities={k: v.tolist() for k, v in probs.items()},
        probabilities_bn={k: v.tolist() for k, v in probs_bn.items()},
        final=final,
        options=dict(vars(opts)),
        pruned_flops=small.flops,
        dense_flops=base.flops,
    )
    return PruneResult(pruned, history, info)


def _mask_name(gates: ChannelGates, key: int | str) -> str:
    """A unit mask's readable name: its group's, or a pre-activation layer's own."""
    return key if isinstance(key, str) else gates.graph.groups[key].name
