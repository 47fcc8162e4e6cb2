"""report.md of one run: what was done, the before/after table, the pictures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prunelab.atomic import atomic_write_text


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + " ..."


def write_run_report(
    run_dir: Path, summary: dict[str, Any], table: str, images: list[Path]
) -> Path:
    """Write run_dir/report.md and return its path."""
    cfg = summary["config"]
    method = cfg.get("method") or {}
    lines = [
        f"# {summary['command']}: {summary['model']}"
        + (f" with {method.get('name')}" if method else ""),
        "",
        f"- data: {cfg.get('data', {}).get('name')}; target: {cfg.get('target')} of baseline "
        f"{cfg.get('metric', 'flops')} (FLOPs are multiply-accumulates, MACs)",
        f"- started from: {cfg.get('checkpoint') or 'random initialisation'}",
        f"- wall time: {summary['seconds']:.0f} s",
        f"- pruned model: `{summary.get('model_file', 'model.pt')}` (load with `prunelab.load`)",
        "",
        table,
        "",
    ]
    info = summary.get("info") or {}
    if info:
        lines += ["## Method details", ""]
        for key, value in info.items():
            lines.append(f"- **{key}**: {_short(value)}")
        lines.append("")
    for img in images:
        lines += [f"![{img.stem}]({img.name})", ""]
    lines += ["## Configuration", "", "```json", json.dumps(cfg, indent=1, default=str), "```", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
