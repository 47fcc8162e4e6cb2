"""The errors prunelab raises on purpose: each names the thing that is wrong.

Every error a user can cause derives from `PrunelabError`, so the command line
can print one clear line and exit non-zero instead of a traceback.
"""

from __future__ import annotations


class PrunelabError(Exception):
    """Base class of all errors prunelab raises deliberately."""


class UnsupportedModelError(PrunelabError):
    """The tracer met an op or module it cannot prune through.

    Raised before anything is changed: a model is never pruned half-way.
    """

    def __init__(self, what: str, where: str, why: str = "") -> None:
        why = " ".join(why.split())  # one line: torch.fx and torch messages span several
        self.what = what
        self.where = where
        self.why = why
        msg = f"unsupported op {what!r} at {where!r}"
        if why:
            msg += f": {why}"
        super().__init__(msg)


class InfeasibleBudgetError(PrunelabError):
    """A cost target cannot be met by any plan the planner may produce."""


class CorruptFileError(PrunelabError):
    """A file is truncated, damaged or not the kind prunelab wrote."""


class DataNotFoundError(PrunelabError):
    """A data set is missing or damaged; the message says where we looked."""


class UnknownNameError(PrunelabError):
    """An unknown model, method, criterion or planner name."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.known = sorted(known)
        shown = ", ".join(self.known[:40]) + (" ..." if len(self.known) > 40 else "")
        super().__init__(f"unknown {kind} {name!r}; known: {shown}")


class ConfigError(PrunelabError):
    """A bad configuration value or command-line argument."""


class MissingDependencyError(PrunelabError):
    """An optional package is not installed; the message names the extra that brings it."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        self.package, self.extra = package, extra
        super().__init__(
            f"{purpose} needs the optional package {package!r}: pip install 'prunelab[{extra}]'"
        )


class ExportError(PrunelabError):
    """An exported model does not compute what the PyTorch model computes."""
