"""Copy a `prunelab compare` folder's record into the repository (bench/results/leagues/NAME).

Keeps what a reader needs to check a leaderboard without rerunning it: the
leaderboard (md, json, png), the compare configuration, and per finished arm
its summary, metrics log, report, plots and model file (CIFAR models are well
under a megabyte; the compare needs them to time the arms side by side).
`--in-progress` also copies unfinished arms whole (their epoch checkpoints),
and `--restore` copies a collected record back into a run folder, so a fresh
work tree continues a league where the last session stopped instead of
rerunning finished arms.

    python bench/collect_league.py runs/leagues/posttrain bench/results/leagues/posttrain
    python bench/collect_league.py --restore bench/results/leagues/posttrain runs/leagues/posttrain
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

TOP_FILES = ("leaderboard.md", "leaderboard.json", "leaderboard.png", "compare.yaml")
ARM_FILES = ("summary.json", "metrics.jsonl", "report.md", "config.yaml", "compare.json",
             "curves.png", "kept_channels.png", "model.pt", "pretrain/summary.json",
             "pretrain/model.pt")  # fmt: skip
LOCK = ".compare.lock"


def collect(src: Path, dst: Path, in_progress: bool = False) -> list[Path]:
    """Copy the record of `src` into `dst`; returns the files written."""
    if not (src / "arms").is_dir():
        raise SystemExit(f"{src} has no arms/: is it a `prunelab compare` folder?")
    written = []
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOP_FILES:
        if (src / name).is_file():
            written.append(Path(shutil.copy2(src / name, dst / name)))
    for arm in sorted((src / "arms").glob("*")):
        target = dst / "arms" / arm.name
        if not (arm / "summary.json").is_file():
            if in_progress:  # everything, so the arm resumes from its last epoch
                shutil.copytree(arm, target, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns(LOCK))  # fmt: skip
                written += [p for p in target.rglob("*") if p.is_file()]
            continue
        drop_resume_state(target)
        # the training logs too: the leaderboard adds earlier processes' epochs to wall time;
        # and a search's collected points (3-D pruning's rounds), the evidence for its fit
        logs = [p.relative_to(arm).as_posix() for p in arm.glob("*/metrics.jsonl")]
        points = [p.relative_to(arm).as_posix() for p in arm.glob("collect/*.json")]
        for name in (*ARM_FILES, *logs, *points):
            if (arm / name).is_file():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                written.append(Path(shutil.copy2(arm / name, target / name)))
    return written


def drop_resume_state(target: Path) -> None:
    """Delete the model files a finished arm's record copied while it ran.

    Epoch checkpoints (at any depth: 3-D pruning keeps one per collection round) and
    cached round models only let an unfinished arm resume; once the arm is done
    they are tens of megabytes of dead weight. The arm's own model files stay.
    """
    keep = {target / name for name in ARM_FILES if name.endswith(".pt")}
    for stale in target.rglob("*.pt"):
        if stale not in keep:
            stale.unlink()
    for folder in sorted(target.rglob("*"), reverse=True):  # deepest first
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def restore(record: Path, run_dir: Path) -> int:
    """Copy a collected record back into a compare folder; returns the files copied."""
    if not (record / "arms").is_dir():
        raise SystemExit(f"{record} holds no collected arms")
    shutil.copytree(record, run_dir, dirs_exist_ok=True)
    return sum(1 for p in record.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="compare folder (or record, with --restore)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--in-progress", action="store_true",
                        help="also copy unfinished arms with their checkpoints")
    parser.add_argument("--restore", action="store_true",
                        help="copy a collected record back into a compare folder")
    args = parser.parse_args()
    if args.restore:
        print(f"{restore(args.source, args.out)} files -> {args.out}")
        return
    files = collect(args.source, args.out, args.in_progress)
    print(f"{len(files)} files -> {args.out}")


if __name__ == "__main__":
    main()
