"""Which torchvision models prunelab prunes, and why it refuses the others.

Builds every torchvision classification, segmentation and detection model
(weights=None, small inputs), traces it, keeps a random half of every prunable
group and checks that the masked model computes what the pruned model
computes and that the planned cost is the counted one. Writes the per-model
list to bench/results/model_coverage.md and the counts into README.md (between
the `model-coverage` markers). `--timm` checks the timm models of
`prunelab.models.timm_models.CASES` instead (they also save, load and train a
step), writing bench/results/timm_coverage.md and the `timm-coverage` block.

    python bench/model_coverage.py                 # everything, about 5 minutes at 1 thread
    python bench/model_coverage.py --task detection
    python bench/model_coverage.py --timm          # needs timm: pip install 'prunelab[timm]'
    python bench/model_coverage.py --models 'vit_|swin|maxvit'   # rerun these, keep the rest
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch
import torch.nn as nn

import prunelab
from prunelab.atomic import atomic_write_text
from prunelab.graph.selfcheck import PruneCheck, check_prunes, randomize_norms
from prunelab.models import timm_models
from prunelab.models.torchvision_catalog import TASKS, build_case, torchvision_cases

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "model_coverage.md"
OUT_TIMM = ROOT / "bench" / "results" / "timm_coverage.md"
README = ROOT / "README.md"


def _verdict(r: PruneCheck) -> str:
    if r.refused is not None:
        return "refused"
    return "pass" if r.passed else "FAIL"


def _row(task: str, name: str, build, batch: int, size: int, roundtrip: bool = False) -> dict:
    """Build one model (seeded), check it, and describe the result as a table row."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model: nn.Module = randomize_norms(build())
    x = torch.randn(batch, 3, size, size)
    r = check_prunes(model, x, copy_model=False, roundtrip=roundtrip)
    del model
    row = {
        "task": task,
        "name": name,
        "input": f"{size}x{size}",
        "verdict": _verdict(r),
        "groups": f"{r.prunable}/{r.groups}",
        "flops": f"{r.flops_ratio:.2f}" if r.refused is None else "",
        "error": f"{r.error:.1e}" if r.refused is None else "",
        "why": str(r.refused or ""),
        "seconds": time.perf_counter() - t0,
    }
    if roundtrip:
        row["load"] = "" if r.load_error is None else f"{r.load_error:.1e}"
        row["trains"] = "" if r.trains is None else ("yes" if r.trains else "NO")
    print(f"{row['name']:40s} {row['verdict']:8s} {row['seconds']:6.1f}s {row['why'][:90]}")
    return row


def run(task: str | None, models: str | None = None) -> list[dict]:
    """The torchvision cases of `task` (all by default) whose names match `models`."""
    return [
        _row(c.task, c.name, lambda c=c: build_case(c), c.batch, c.image_size)
        for c in torchvision_cases(task)
        if not models or re.search(models, c.name)
    ]


def run_timm() -> list[dict]:
    """The timm cases; batch 2 so the training step's batch norms see two images."""
    return [
        _row(
            "timm", c.name,
            lambda c=c: prunelab.create(f"timm/{c.name}", num_classes=10, **c.kwargs),
            2, c.image_size, roundtrip=True,
        )
        for c in timm_models.CASES
    ]  # fmt: skip


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
    if rows and rows[0]["task"] == "timm":
        done = sum(r["verdict"] == "pass" for r in rows)
        return f"prunelab prunes {done} of {len(rows)} timm models"
    counts = _counts(rows)
    done = sum(p for p, _ in counts.values())
    total = sum(n for _, n in counts.values())
    parts = ", ".join(f"{t} {p} of {n}" for t, (p, n) in counts.items())
    return f"prunelab prunes {done} of {total} torchvision models ({parts})"


_HEAD = (
    "Each model is built with `weights=None` (`weights_backbone=None`), traced, and pruned",
    "to a random half of every prunable group; *pass* means the masked model's outputs",
    "equal the pruned model's (relative error < 1e-4) and the planned FLOPs and params",
    "equal those counted on the pruned model (layer norms and zero-initialised linear",
    "layers get random values first, or a zero classifier hides every difference; ConvNeXt",
    "is built with layer scale 1, not 1e-6, which would hide a wrongly pruned block).",
    "*groups*: prunable of all channel groups; *flops*: pruned / dense FLOPs at that plan.",
)
_HEAD_TIMM = (
    "Each model is built with `prunelab.create(\"timm/NAME\", num_classes=10)`",
    "(`pretrained=False`), traced, and pruned to a random half of every prunable group;",
    "*pass* means the masked model's outputs equal the pruned model's (relative error",
    "< 1e-4), the planned FLOPs and params equal those counted on the pruned model, the",
    "pruned model saved with `prunelab.save` and loaded gives identical outputs (*load*:",
    "largest relative difference) and it trains one SGD step (*trains*: finite weights",
    "that moved). *groups*: prunable of all channel groups (a group left whole is one",
    "whose channels meet an op that mixes them); *flops*: pruned / dense FLOPs.",
)


def write_markdown(rows: list[dict]) -> str:
    timm = bool(rows) and rows[0]["task"] == "timm"
    versions = f"timm {timm_models.version()}" if timm else "torchvision 0.29.1"
    extra = ["load", "trains"] if timm else []
    columns = ["task", "name", "input", "verdict", "groups", "flops", "error", *extra]
    lines = [
        f"# {'timm' if timm else 'torchvision'} model coverage",
        "",
        f"Written by `bench/model_coverage.py{' --timm' if timm else ''}` (torch 2.14.1, "
        f"{versions}, 1 thread).",
        *(_HEAD_TIMM if timm else _HEAD),
        "",
        f"**{summary_line(rows)}.**",
        "",
        "| task | model | input | verdict | groups | flops | error | "
        + "".join(f"{c} | " for c in extra) + "seconds | why refused |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for r in rows:
        why = r["why"].replace("|", "\\|")
        cells = "".join(f"{r[c]} | " for c in columns)
        lines.append(f"| {cells}{r['seconds']:.1f} | {why} |")
    return "\n".join(lines) + "\n"


MARK = re.compile(r"(<!-- model-coverage -->\n)(.*?)(<!-- /model-coverage -->)", re.S)


def update_readme(rows: list[dict], page: Path) -> None:
    """Rewrite this run's line of the README's model-coverage block, keeping the others."""
    refused = ", ".join(r["name"] for r in rows if r["verdict"] != "pass")
    refusals = f"; refused, each with one error naming the op: {refused}" if refused else ""
    line = (
        f"{summary_line(rows)}{refusals} "
        f"([per-model list and reasons](bench/results/{page.name})).\n"
    )
    text = README.read_text()
    found = MARK.search(text)
    if not found:
        raise SystemExit("README.md has no <!-- model-coverage --> block to update")
    kind = summary_line(rows).split(" models")[0].rsplit(" ", 1)[1]  # torchvision or timm
    lines = [k for k in found.group(2).splitlines(keepends=True) if f" {kind} models" not in k]
    lines = sorted([*lines, line], key=lambda k: " timm models" in k)  # torchvision first
    block = found.group(1) + "".join(lines) + found.group(3)
    atomic_write_text(README, text[: found.start()] + block + text[found.end() :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=TASKS, default=None)
    ap.add_argument("--timm", action="store_true", help="check the timm models instead")
    ap.add_argument(
        "--models", default=None, help="regex of model names to rerun; the table keeps the others"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = run_timm() if args.timm else run(args.task, args.models)
    page = OUT_TIMM if args.timm else OUT
    if args.models and not args.timm:
        rows = merged(read_rows(OUT), rows)
    atomic_write_text(page, write_markdown(rows))
    if args.timm or args.task is None:
        update_readme(rows, page)
    print(summary_line(rows))


if __name__ == "__main__":
    main()
