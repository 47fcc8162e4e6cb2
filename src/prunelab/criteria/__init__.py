"""Channel criteria: pure functions from (model, group, stats) to unit scores.

Higher scores mean more important. For a coupled group (a residual stage)
the members' scores are summed. Add a criterion with one function and
`@register_criterion("name")` in a module of this package: every module here
is imported below, so nothing else needs editing.
"""

import importlib
import pkgutil

from prunelab.criteria.registry import (
    DATA_DRIVEN,
    Criterion,
    get_criterion,
    list_criteria,
    register_criterion,
    score,
)
from prunelab.criteria.taylor import collect_taylor

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "DATA_DRIVEN",
    "Criterion",
    "collect_taylor",
    "get_criterion",
    "list_criteria",
    "register_criterion",
    "score",
]
