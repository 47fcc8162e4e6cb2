"""Run reports: before/after tables, plots, report.md, and comparisons of runs."""

from prunelab.report.compare import SUMMARY_NAME, compare_runs, read_summary
from prunelab.report.markdown import write_run_report
from prunelab.report.summary import ModelStats, format_table, layer_widths, measure

__all__ = [
    "SUMMARY_NAME",
    "ModelStats",
    "compare_runs",
    "format_table",
    "layer_widths",
    "measure",
    "read_summary",
    "write_run_report",
]
