"""Channel criteria: pure functions from (model, group, stats) to unit scores.

Higher scores mean more important. For a coupled group (a residual stage)
the members' scores are summed. Add a criterion with one function and
`@register_criterion("name")`.
"""

from prunelab.criteria import bn_scale, fpgm, norms, random_scores, taylor  # noqa: F401 - registers
from prunelab.criteria.registry import (
    DATA_DRIVEN,
    Criterion,
    get_criterion,
    list_criteria,
    register_criterion,
    score,
)
from prunelab.criteria.taylor import collect_taylor

__all__ = [
    "DATA_DRIVEN",
    "Criterion",
    "collect_taylor",
    "get_criterion",
    "list_criteria",
    "register_criterion",
    "score",
]
