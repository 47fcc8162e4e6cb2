"""bench/collect_league.py: a finished arm's record keeps its evidence and drops resume state."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    path = ROOT / "bench" / "collect_league.py"
    spec = importlib.util.spec_from_file_location("collect_league", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _touch(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_finished_arm_keeps_points_and_model_but_not_round_checkpoints(tmp_path):
    collect_league = _module()
    src, dst = tmp_path / "run", tmp_path / "record"
    arm = src / "arms" / "dwr-s0"
    for name in ("collect/depth_1/checkpoint.pt", "collect/depth_1.pt", "finetune/checkpoint.pt"):
        _touch(arm / name)
    _touch(arm / "collect/depth_1.json", "{}")
    _touch(arm / "finetune/metrics.jsonl", "{}\n")
    _touch(src / "leaderboard.md", "| arm |")
    # the arm as an in-progress collection left it: everything, checkpoints included
    collect_league.collect(src, dst, in_progress=True)
    assert (dst / "arms/dwr-s0/collect/depth_1/checkpoint.pt").is_file()

    _touch(arm / "summary.json", "{}")
    _touch(arm / "model.pt")
    collect_league.collect(src, dst)
    kept = sorted(p.relative_to(dst / "arms/dwr-s0").as_posix()
                  for p in (dst / "arms/dwr-s0").rglob("*") if p.is_file())  # fmt: skip
    assert kept == ["collect/depth_1.json", "finetune/metrics.jsonl", "model.pt", "summary.json"]
    assert not (dst / "arms/dwr-s0/collect/depth_1").exists()  # emptied folders go too
    assert (dst / "leaderboard.md").read_text() == "| arm |"
