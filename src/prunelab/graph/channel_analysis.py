"""Channel variables, the members that read them, and the groups they form."""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from prunelab.errors import UnsupportedModelError
from prunelab.graph.equivalence import Equivalence
from prunelab.graph.groups import Group, LayerInfo, Member, ProductCost, Role
from prunelab.graph.op_rules import OpRules
from prunelab.graph.values import _op_name, _Record, _shape, _Value, _where


class ChannelAnalysis(OpRules):
    """One pass over an fx graph that records channel variables and members."""

    def __init__(
        self,
        graph: fx.Graph,
        root: nn.Module,
        ignored: set[str],
        inference_modules: set[str] | None = None,
    ) -> None:
        self.graph = graph  # traced from `root`: its targets are `root`'s attribute paths
        self.root = root
        self.ignored = ignored
        self.ops = Equivalence()  # unions made by ops: define units
        self.spaces = Equivalence()  # ops unions + "created together": define groups
        self.values: dict[fx.Node, object] = {}
        self.records: list[_Record] = []
        self.pinned: dict[int, str] = {}  # variable -> why it may not be pruned
        self.source_vars: list[np.ndarray] = []  # one array per fresh producer space
        self.layers: dict[str, LayerInfo] = {}
        self.products: list[ProductCost] = []  # MACs outside conv/linear modules (attention)
        # layers whose FLOPs count: those inference runs (not training-only aux heads)
        self.inference_modules = inference_modules

    # -- variables -------------------------------------------------------
    def fresh(self, n: int, source: bool = True) -> np.ndarray:
        ids = self.ops.extend(n)
        self.spaces.extend(n, joined=True)
        if source and n:
            self.source_vars.append(ids)
        return ids

    def tie(self, a: np.ndarray, b: np.ndarray) -> None:
        self.ops.tie(a, b)
        self.spaces.tie(a, b)

    def pin(self, ids: np.ndarray, why: str) -> None:
        for i in ids.tolist():
            self.pinned.setdefault(i, why)

    def record(
        self,
        module: str,
        param: str,
        dim: int,
        ids: np.ndarray,
        role: Role,
        positions: np.ndarray | None = None,
    ) -> None:
        if positions is None:
            positions = np.arange(len(ids), dtype=np.int64)
        self.records.append(_Record(module, param, dim, positions, ids, role))

    # -- helpers -----------------------------------------------------------
    def tracked(self, arg: object) -> _Value | None:
        if isinstance(arg, fx.Node):
            v = self.values.get(arg)
            return v if isinstance(v, _Value) else None
        return None

    def tracked_inputs(self, node: fx.Node) -> list[_Value]:
        found: list[_Value] = []

        def visit(a: object) -> None:
            v = self.tracked(a)
            if v is not None:
                found.append(v)

        fx.node.map_arg((node.args, node.kwargs), lambda a: visit(a) or a)
        return found

    def unsupported(self, node: fx.Node, why: str = "") -> UnsupportedModelError:
        return UnsupportedModelError(_op_name(node), _where(node), why)

    def opaque(self, node: fx.Node, why: str) -> None:
        """An op that mixes channels: fix its inputs, give it fixed outputs."""
        for v in self.tracked_inputs(node):
            self.pin(v.ids, f"{why} at {_where(node)}")
        shape = _shape(node)
        if shape is not None and len(shape) >= 2:
            # A shape-keeping op (a LayerNorm over a permuted tensor) keeps its input's
            # channel axis, so later ops still find the channels where they are.
            inputs = self.tracked_inputs(node)
            same = inputs and inputs[0].shape == shape and inputs[0].split is None
            axis = inputs[0].axis if same else 1
            self.values[node] = _Value(self.fresh(shape[axis]), axis, shape)
            self.pin(self.values[node].ids, f"{why} at {_where(node)}")

    def passthrough(self, node: fx.Node, v: _Value) -> None:
        shape = _shape(node) or v.shape
        self.values[node] = _Value(v.ids, v.axis, shape, v.split, v.gap)

    # -- groups -----------------------------------------------------------
    def build(self, param_shapes: dict[tuple[str, str], tuple[int, ...]]) -> list[Group]:
        records = self._merged_records()
        unit_root = self.ops.roots()
        group_root = self.spaces.roots()
        # A root is the smallest variable of its set, so sorting roots orders units and
        # groups by first appearance: a layer's channels keep their order as unit indices.
        unit_roots = np.unique(unit_root)
        group_roots = np.unique(group_root)
        group_of_unit = np.searchsorted(group_roots, group_root[unit_roots])
        order = np.argsort(group_of_unit, kind="stable")
        counts = np.bincount(group_of_unit, minlength=len(group_roots))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.empty(len(unit_roots), dtype=np.int64)
        rank[order] = np.arange(len(unit_roots)) - np.repeat(starts, counts)
        unit_of_var = rank[np.searchsorted(unit_roots, unit_root)]
        group_of_var = np.searchsorted(group_roots, group_root)

        members: list[list[Member]] = [[] for _ in group_roots]
        for r in records:
            groups_of = group_of_var[r.ids]
            if not len(groups_of):
                continue
            if (groups_of == groups_of[0]).all():  # the common case: one group, no sorting
                parts = [(int(groups_of[0]), slice(None))]
            else:  # a concatenation's consumer: split by group, keeping position order
                order = np.argsort(groups_of, kind="stable")
                cuts = np.flatnonzero(np.diff(groups_of[order])) + 1
                parts = [(int(groups_of[idx[0]]), idx) for idx in np.split(order, cuts)]
            for g, sel in parts:
                members[g].append(
                    Member(
                        r.module,
                        r.param,
                        r.dim,
                        torch.from_numpy(r.positions[sel].copy()),
                        torch.from_numpy(unit_of_var[r.ids[sel]].copy()),
                        r.role,
                    )
                )

        pinned_why: dict[int, str] = {}
        for var, why in self.pinned.items():
            pinned_why.setdefault(int(group_of_var[var]), why)
        sources = np.bincount(
            [int(group_of_var[ids[0]]) for ids in self.source_vars], minlength=len(group_roots)
        )
        groups: list[Group] = []
        for gi, n_units in enumerate(counts.tolist()):
            mem = members[gi]
            if not mem:
                continue  # channels no module owns (e.g. a pooled copy); nothing to prune
            widths = [
                int(np.bincount(m.units.numpy()).max())
                for m in mem
                if m.role == "out" and m.param == "weight"
            ]
            has_producer = any(m.role == "out" for m in mem)
            why = pinned_why.get(gi, "" if has_producer else "no layer produces these channels")
            groups.append(
                Group(
                    index=len(groups),
                    size=n_units,
                    members=mem,
                    prunable=not why,
                    reason=why,
                    sources=int(sources[gi]),
                    unit_width=max(widths, default=1),
                )
            )
        return groups

    def _merged_records(self) -> list[_Record]:
        """One record per (module, param, dim, role).

        A module called twice reads the same tensor slices twice: its positions
        are one set of channels, so the variables met at a position are tied.
        """
        merged: dict[tuple[str, str, int, str], _Record] = {}
        for r in self.records:
            key = (r.module, r.param, r.dim, r.role)
            if key not in merged:
                merged[key] = _Record(r.module, r.param, r.dim, r.positions, r.ids, r.role)
                continue
            m = merged[key]
            first = dict(zip(m.positions.tolist(), m.ids.tolist(), strict=True))
            new = []
            for p, i in zip(r.positions.tolist(), r.ids.tolist(), strict=True):
                if p in first:
                    self.ops.tie(first[p], i)
                    self.spaces.tie(first[p], i)
                else:
                    new.append((p, i))
            if new:
                m.positions = np.concatenate([m.positions, [p for p, _ in new]])
                m.ids = np.concatenate([m.ids, [i for _, i in new]])
        return list(merged.values())
