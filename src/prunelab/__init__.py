"""prunelab: make convolutional networks physically smaller and faster.

    >>> import torch, prunelab
    >>> model = prunelab.create("resnet56")
    >>> x = torch.randn(1, 3, 32, 32)
    >>> graph = prunelab.trace(model, x)
    >>> plan = prunelab.planners.for_cost(model, graph, target=0.5, round_to=8)
    >>> small = prunelab.prune(model, plan)
    >>> prunelab.count(small, x).flops / prunelab.count(model, x).flops   # about 0.5

Costs are multiply-accumulates (MACs), called FLOPs as the pruning papers do.
"""

from prunelab import planners
from prunelab.deploy import fold_batch_norms
from prunelab.errors import (
    ConfigError,
    CorruptFileError,
    DataNotFoundError,
    ExportError,
    InfeasibleBudgetError,
    MissingDependencyError,
    PrunelabError,
    UnknownNameError,
    UnsupportedModelError,
)
from prunelab.exporter import export
from prunelab.graph import ChannelGraph, ChannelMask, Group, Plan, prune, trace
from prunelab.io import load, save
from prunelab.metrics import Cost, compare_latency, count, measure_latency
from prunelab.models import create, create_from_arch, list_models

__version__ = "0.1.0"

__all__ = [
    "ChannelGraph",
    "ChannelMask",
    "ConfigError",
    "CorruptFileError",
    "Cost",
    "DataNotFoundError",
    "ExportError",
    "Group",
    "InfeasibleBudgetError",
    "MissingDependencyError",
    "Plan",
    "PrunelabError",
    "UnknownNameError",
    "UnsupportedModelError",
    "__version__",
    "compare_latency",
    "count",
    "create",
    "create_from_arch",
    "export",
    "fold_batch_norms",
    "list_models",
    "load",
    "measure_latency",
    "planners",
    "prune",
    "save",
    "trace",
]
