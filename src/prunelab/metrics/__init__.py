"""What a model costs: FLOPs (as MACs) and parameters, and measured wall-clock time.

"FLOPs" throughout prunelab are multiply-accumulates of conv and linear
layers per image, the pruning papers' convention.
"""

from prunelab.metrics.cost import Cost, CostRatio, count, format_count
from prunelab.metrics.latency import (
    LatencyStats,
    best_memory_format,
    compare_latency,
    compare_train_step,
    measure_latency,
    measure_train_step,
    time_callables,
)

__all__ = [
    "Cost",
    "CostRatio",
    "LatencyStats",
    "best_memory_format",
    "compare_latency",
    "compare_train_step",
    "count",
    "format_count",
    "measure_latency",
    "measure_train_step",
    "time_callables",
]
