"""`prunelab report RUN...`: several runs (or compare folders) in one table and one plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prunelab.atomic import atomic_write_text
from prunelab.errors import CorruptFileError
from prunelab.report.plots import accuracy_vs_flops

SUMMARY_NAME = "summary.json"


def read_summary(run: str | Path) -> dict[str, Any]:
    path = Path(run)
    if path.is_dir():
        path = path / SUMMARY_NAME
    if not path.is_file():
        raise CorruptFileError(f"no run summary at {path} (is {run} a prunelab run folder?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{path} is not valid JSON: {exc}") from exc


def expand_compare_folders(runs: list[str | Path]) -> list[Path]:
    """Run folders, with a `prunelab compare` folder standing for all of its finished arms."""
    from prunelab.report.leaderboard import read_leaderboard

    out: list[Path] = []
    for run in runs:
        board = read_leaderboard(Path(run)) if Path(run).is_dir() else None
        if board is None:
            out.append(Path(run))
        else:
            out += [Path(r["run_dir"]) for r in board["runs"]]
    return out


def compare_runs(runs: list[str | Path], out: Path) -> tuple[str, Path]:
    """Write out/report.md and out/accuracy_vs_flops.png comparing `runs`; return the table."""
    summaries = [(Path(r), read_summary(r)) for r in expand_compare_folders(runs)]
    lines = [
        "| run | method | top-1 (%) | FLOPs (MACs) | params | latency (ms) | speedup |",
        "|---|---|---|---|---|---|---|",
    ]
    points: list[dict[str, Any]] = []
    seen_baselines: set[tuple[str, int]] = set()
    for path, s in summaries:
        rows = s["rows"]
        base, final = rows[0], rows[-1]
        key = (s["model"], base["flops"])
        if len(rows) > 1 and key not in seen_baselines and base.get("top1") is not None:
            seen_baselines.add(key)
            points.append({"label": f"{s['model']} dense", **base})
        points.append({"label": path.name, **final})
        top1 = "-" if final.get("top1") is None else f"{final['top1']:.2f}"
        lat = "-" if final.get("latency_ms") is None else f"{final['latency_ms']:.1f}"
        speed = "-" if final.get("speedup") is None else f"{final['speedup']:.2f}x"
        lines.append(
            f"| {path.name} | {s.get('method') or '-'} | {top1} | "
            f"{final['flops'] / 1e6:.1f} M ({final['flops'] / base['flops']:.0%}) | "
            f"{final['params'] / 1e6:.3f} M | {lat} | {speed} |"
        )
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    image = accuracy_vs_flops(points, out / "accuracy_vs_flops.png", "top-1 vs FLOPs")
    atomic_write_text(out / "report.md", f"# Runs compared\n\n{table}\n\n![]({image.name})\n")
    return table, image
