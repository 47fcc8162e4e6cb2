"""Which torchvision models prunelab prunes, and why it refuses the others.

Builds every torchvision classification, segmentation and detection model
(weights=None, small inputs), traces it, keeps a random half of every prunable
group and checks that the masked model computes what the pruned model
computes and that the planned cost is the counted one. Writes the per-model
list to bench/results/model_coverage.md and the counts into README.md (between
the `model-coverage` markers).

    python bench/model_coverage.py                 # everything, about 5 minutes at 1 thread
    python bench/model_coverage.py --task detection
    python bench/model_coverage.py --models 'vit_|swin|maxvit'   # rerun these, keep the rest
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch

from prunelab.atomic import atomic_write_text
from prunelab.graph.selfcheck import PruneCheck, check_prunes, randomize_norms
from prunelab.models.torchvision_catalog import TASKS, build_case, torchvision_cases

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "model_coverage.md"
README = ROOT / "README.md"
MARK = re.compile(r"<!-- model-coverage -->.*?<!-- /model-coverage -->", re.S)


def _verdict(r: PruneCheck) -> str:
    if r.refused is not None:
        return "refused"
    return "pass" if r.passed else "FAIL"


def run(task: str | None, models: str | None = None) -> list[dict]:
    rows = []
    for case in torchvision_cases(task):
        if models and not re.search(models, case.name):
            continue
        torch.manual_seed(0)
        t0 = time.perf_counter()
        model = randomize_norms(build_case(case))
        x = torch.randn(case.batch, 3, case.image_size, case.image_size)
        r = check_prunes(model, x, copy_model=False)
        del model
        row = {
            "task": case.task,
            "name": case.name,
            "input": f"{case.image_size}x{case.image_size}",
            "verdict": _verdict(r),
            "groups": f"{r.prunable}/{r.groups}",
            "flops": f"{r.flops_ratio:.2f}" if r.refused is None else "",
            "error": f"{r.error:.1e}" if r.refused is None else "",
            "why": str(r.refused or ""),
            "seconds": time.perf_counter() - t0,
        }
        print(f"{row['name']:40s} {row['verdict']:8s} {row['seconds']:6.1f}s {row['why'][:90]}")
        rows.append(row)
    return rows


_COLUMNS = ("task", "name", "input", "verdict", "groups", "flops", "error", "seconds", "why")


def read_rows(path: Path) -> list[dict]:
    """The rows of an earlier run's table (to rerun a few models and keep the rest)."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) != len(_COLUMNS) or cells[0] not in TASKS:
            continue
        row = dict(zip(_COLUMNS, cells, strict=True))
        row["seconds"] = float(row["seconds"])
        row["why"] = row["why"].replace("\\|", "|")
        rows.append(row)
    return rows


def merged(old: list[dict], new: list[dict]) -> list[dict]:
    """`old` with the rows of the models in `new` replaced, in torchvision's order."""
    by_name = {(r["task"], r["name"]): r for r in old}
    by_name.update({(r["task"], r["name"]): r for r in new})
    order = {(c.task, c.name): i for i, c in enumerate(torchvision_cases())}
    return sorted(by_name.values(), key=lambda r: order.get((r["task"], r["name"]), len(order)))


def _counts(rows: list[dict]) -> dict[str, tuple[int, int]]:
    return {
        t: (
            sum(r["verdict"] == "pass" for r in rows if r["task"] == t),
            sum(r["task"] == t for r in rows),
        )
        for t in TASKS
        if any(r["task"] == t for r in rows)
    }


def summary_line(rows: list[dict]) -> str:
    counts = _counts(rows)
    done = sum(p for p, _ in counts.values())
    total = sum(n for _, n in counts.values())
    parts = ", ".join(f"{t} {p} of {n}" for t, (p, n) in counts.items())
    return f"prunelab prunes {done} of {total} torchvision models ({parts})"


def write_markdown(rows: list[dict]) -> str:
    lines = [
        "# torchvision model coverage",
        "",
        "Written by `bench/model_coverage.py` (torch 2.14.1, torchvision 0.29.1, 1 thread).",
        "Each model is built with `weights=None` (`weights_backbone=None`), traced, and pruned",
        "to a random half of every prunable group; *pass* means the masked model's outputs",
        "equal the pruned model's (relative error < 1e-4) and the planned FLOPs and params",
        "equal those counted on the pruned model (layer norms and zero-initialised linear",
        "layers get random values first, or a zero classifier hides every difference).",
        "*groups*: prunable of all channel groups;",
        "*flops*: pruned / dense FLOPs at that plan.",
        "",
        f"**{summary_line(rows)}.**",
        "",
        "| task | model | input | verdict | groups | flops | error | seconds | why refused |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        why = r["why"].replace("|", "\\|")
        lines.append(
            f"| {r['task']} | {r['name']} | {r['input']} | {r['verdict']} | {r['groups']} | "
            f"{r['flops']} | {r['error']} | {r['seconds']:.1f} | {why} |"
        )
    return "\n".join(lines) + "\n"


def update_readme(rows: list[dict]) -> None:
    refused = ", ".join(r["name"] for r in rows if r["verdict"] != "pass")
    refusals = f"; refused, each with one error naming the op: {refused}" if refused else ""
    block = (
        "<!-- model-coverage -->\n"
        f"{summary_line(rows)}{refusals} "
        "([per-model list and reasons](bench/results/model_coverage.md)).\n"
        "<!-- /model-coverage -->"
    )
    text = README.read_text()
    if not MARK.search(text):
        raise SystemExit("README.md has no <!-- model-coverage --> block to update")
    atomic_write_text(README, MARK.sub(lambda _: block, text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=TASKS, default=None)
    ap.add_argument(
        "--models", default=None, help="regex of model names to rerun; the table keeps the others"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = run(args.task, args.models)
    if args.models:
        rows = merged(read_rows(OUT), rows)
    atomic_write_text(OUT, write_markdown(rows))
    if args.task is None:
        update_readme(rows)
    print(summary_line(rows))


if __name__ == "__main__":
    main()
