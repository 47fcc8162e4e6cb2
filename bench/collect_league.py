"""Copy a `prunelab compare` folder's record into the repository (bench/results/leagues/NAME).

Keeps what a reader needs to check a leaderboard without rerunning it: the
leaderboard (md, json, png), the compare configuration, and per arm its
summary, metrics log, report and plots. Model files and checkpoints stay in
runs/ (they are large and reproducible from the configuration).

    python bench/collect_league.py runs/leagues/posttrain bench/results/leagues/posttrain
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

TOP_FILES = ("leaderboard.md", "leaderboard.json", "leaderboard.png", "compare.yaml")
ARM_FILES = ("summary.json", "metrics.jsonl", "report.md", "config.yaml", "compare.json",
             "curves.png", "kept_channels.png")  # fmt: skip


def collect(src: Path, dst: Path) -> list[Path]:
    """Copy the record of `src` into `dst`; returns the files written."""
    if not (src / "leaderboard.json").is_file():
        raise SystemExit(f"{src} has no leaderboard.json: run `prunelab compare` there first")
    written = []
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOP_FILES:
        if (src / name).is_file():
            written.append(Path(shutil.copy2(src / name, dst / name)))
    for arm in sorted((src / "arms").glob("*")):
        if not (arm / "summary.json").is_file():
            continue  # unfinished: nothing to record yet
        for name in ARM_FILES:
            if (arm / name).is_file():
                (dst / "arms" / arm.name).mkdir(parents=True, exist_ok=True)
                written.append(Path(shutil.copy2(arm / name, dst / "arms" / arm.name / name)))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compare_dir", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    files = collect(args.compare_dir, args.out)
    print(f"{len(files)} files -> {args.out}")


if __name__ == "__main__":
    main()
