"""The matrices CHEX's column subset selection reads: one column per channel of a group.

The paper scores a layer's channels as the columns of its weight matrix
(rows: the C_in * k * k weights of a filter). That matrix needs at least as
many rows as columns, which a 3x3 convolution of a ResNet has, but a 1x1
expansion (C_in rows for 6 * C_in channels) or a depthwise filter (k * k rows)
does not; there every channel lies in the span of the others and CSS says
nothing. The other sources here keep the idea (a channel matters by how much
of the group's subspace it carries) with enough rows:

- ``weights``: the reference, each producer's weight matrix; l1 where it is wide;
- ``stacked``: the group's producer rows and its consumers' input columns stacked;
- ``features``: the channels' feature maps on a batch of real images, taken at
  the input of each consumer (what the next layer reads: after the activation,
  N * H * W rows); consumers that see fewer rows than channels (after global
  pooling) are left out, and a group with none of them uses ``stacked``;
- ``auto`` (the default): ``weights`` where every producer matrix is tall
  (the paper's own formulation, unchanged on ResNets), else ``features``.

Each source yields a list of (units present, X) pairs; CSS and the regrow
orthogonality sum their per-matrix scores. `used` names the source a group
really got, ``l1`` when even the last resort was wide.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from prunelab.graph.groups import Group, Member

SOURCES = ("auto", "features", "stacked", "weights")
Matrices = list[tuple[torch.Tensor, torch.Tensor]]
Weights = Mapping[tuple[str, str], torch.Tensor]
Features = dict[str, torch.Tensor]  # consumer module -> its input rows (R x features)


def _by_unit(rows: torch.Tensor, member: Member, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(units present, X) from `rows` (R x positions of `member`): one column per unit.

    A unit owning p positions gets them stacked into one column of p * R rows.
    """
    rows = rows[:, member.positions]
    present, per_unit = torch.unique(member.units, return_counts=True)
    if bool((per_unit == per_unit[0]).all()):
        order = torch.argsort(member.units, stable=True)
        p = int(per_unit[0])
        cols = rows[:, order].reshape(rows.shape[0], len(present), p)
        return present, cols.permute(2, 0, 1).reshape(p * rows.shape[0], len(present))
    summed = torch.zeros(rows.shape[0], size, dtype=rows.dtype)  # uneven units: summed
    return present, summed.index_add_(1, member.units, rows)[:, present]


def weight_columns(
    weights: Weights, member: Member, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(units present, X): the rows of `member`'s tensor along its dim, one column per unit."""
    w = weights[(member.module, member.param)].detach().cpu().double()
    rows = w.movedim(member.dim, 0).reshape(w.shape[member.dim], -1)
    return _by_unit(rows.T, member, size)


def is_tall(x: torch.Tensor) -> bool:
    """CSS is well posed: at least as many rows as columns."""
    return x.shape[0] >= x.shape[1]


def weight_matrices(weights: Weights, group: Group) -> Matrices:
    """The paper's matrices: each producer's filters as columns."""
    return [weight_columns(weights, m, group.size) for m in group.members_of("out", "weight")]


def stacked_matrix(weights: Weights, group: Group) -> Matrices:
    """One matrix: every producer's filter rows over every consumer's input columns."""
    members = [m for m in group.members if m.param == "weight" and m.role in ("out", "in")]
    parts = [weight_columns(weights, m, group.size) for m in members]
    parts = [(p, x) for p, x in parts if len(p) == group.size]
    if not parts:
        return []
    return [(parts[0][0], torch.cat([x for _, x in parts], dim=0))]


def feature_matrices(features: Features, group: Group) -> Matrices:
    """The group's channels at each consumer's input; only consumers with enough rows."""
    out = []
    for m in group.members_of("in", "weight"):
        rows = features.get(m.module)
        if rows is None:
            continue
        present, x = _by_unit(rows, m, group.size)
        if is_tall(x):
            out.append((present, x))
    return out


def group_matrices(
    source: str, group: Group, weights: Weights, features: Features | None
) -> tuple[Matrices, str]:
    """The matrices of `group` for `source`, and the source really used (see the module)."""
    if source == "weights":
        mats = weight_matrices(weights, group)
        return mats, "weights" if all(is_tall(x) for _, x in mats) else "l1"
    if source == "auto":
        mats = weight_matrices(weights, group)
        if all(is_tall(x) for _, x in mats):
            return mats, "weights"
    if source in ("auto", "features") and features is not None:
        mats = feature_matrices(features, group)
        if mats:
            return mats, "features"
    mats = stacked_matrix(weights, group)
    return mats, "stacked" if mats and all(is_tall(x) for _, x in mats) else "l1"


def consumers(group: Group, model: nn.Module) -> list[str]:
    """Modules whose input the feature source reads (dense convs and linear layers)."""
    names = []
    for m in group.members_of("in", "weight"):
        mod = model.get_submodule(m.module)
        if isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv2d) and mod.groups == 1):
            names.append(m.module)
    return names


@torch.no_grad()
def capture_inputs(
    model: nn.Module, names: list[str], x: torch.Tensor, max_rows: int, seed: int = 0
) -> Features:
    """Input rows (samples x channels) of each module in `names` on images `x`, eval mode.

    Convolution inputs give one row per image and pixel; at most `max_rows` of
    them are kept (a fixed random subset), enough for CSS and cheap to decompose.
    """
    seen: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(seed)

    def hook(name: str):
        def grab(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            t = args[0].detach()
            rows = t.movedim(1, -1).reshape(-1, t.shape[1]) if t.dim() == 4 else t.flatten(1)
            if rows.shape[0] > max_rows:
                rows = rows[torch.randperm(rows.shape[0], generator=gen)[:max_rows].to(t.device)]
            seen.setdefault(name, rows.cpu().double())

        return grab

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in set(names)]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen
