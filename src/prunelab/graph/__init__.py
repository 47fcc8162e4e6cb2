"""The channel engine: trace a model into groups, mask them, remove them."""

from prunelab.graph.groups import ChannelGraph, Group, LayerInfo, Member
from prunelab.graph.masks import ChannelMask
from prunelab.graph.plan import Plan, round_keep
from prunelab.graph.surgery import prune
from prunelab.graph.trace import trace

__all__ = [
    "ChannelGraph",
    "ChannelMask",
    "Group",
    "LayerInfo",
    "Member",
    "Plan",
    "prune",
    "round_keep",
    "trace",
]
