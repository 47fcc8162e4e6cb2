"""Pruning methods, one file a paper, all behind `Method.run(PruneTask) -> PruneResult`.

Every module in this package is imported here, so a method registers itself
with `@register_method` just by existing; nobody edits a central list.
"""

import importlib
import pkgutil

from prunelab.methods.base import (
    Method,
    PruneResult,
    PruneTask,
    get_method,
    list_methods,
    register_method,
)

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["Method", "PruneResult", "PruneTask", "get_method", "list_methods", "register_method"]
