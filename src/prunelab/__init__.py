"""prunelab: make convolutional networks physically smaller and faster.

Costs are multiply-accumulates (MACs), called FLOPs as the pruning papers do.
"""

from prunelab.errors import (
    ConfigError,
    CorruptFileError,
    DataNotFoundError,
    InfeasibleBudgetError,
    PrunelabError,
    UnknownNameError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "CorruptFileError",
    "DataNotFoundError",
    "InfeasibleBudgetError",
    "PrunelabError",
    "UnknownNameError",
    "UnsupportedModelError",
    "__version__",
]
