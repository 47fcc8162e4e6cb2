"""Command line entry point (`prunelab ...`, `python -m prunelab ...`)."""

from prunelab.cli.main import main

__all__ = ["main"]
