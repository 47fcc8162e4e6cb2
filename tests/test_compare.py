"""`prunelab compare` end to end on synthetic data: leaderboard files, resume, budget checks."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml

from prunelab import io, models
from prunelab.cli import main
from prunelab.cli.compare_cmd import expand_arms, load_compare
from prunelab.errors import ConfigError
from prunelab.train import loop

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(tmp_path: Path, **changes) -> Path:
    checkpoint = tmp_path / "dense.pt"
    if not checkpoint.exists():
        io.save(models.create("resnet20", num_classes=10), checkpoint)
    config = {
        "name": "tiny",
        "budget_epochs": 2,
        "baseline": "uniform",
        "base": {
            "model": "resnet20",
            "checkpoint": str(checkpoint),
            "data": {"name": "synthetic", "n_train": 96, "n_test": 32, "batch_size": 32},
            "target": 0.5,
            "train": {"epochs": 2, "steps_per_epoch": 2, "lr": 0.05, "channels_last": "off",
                      "threads": 1},
            "latency": {"batch": 2, "threads": 1, "repeats": 2},
        },
        "arms": {
            "uniform": {"method": {"name": "uniform", "criterion": "l1", "round_to": 1}},
            "global": {"method": {"name": "global", "criterion": "l1", "round_to": 1}},
        },
        **changes,
    }
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _rows(folder: Path) -> list[tuple]:
    board = json.loads((folder / "leaderboard.json").read_text())
    return [(r["arm"], r["top1"], r["flops"], r["params"], r["train_epochs"])
            for r in board["rows"]]  # fmt: skip


def test_two_arm_compare_writes_table_plot_and_json(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", str(_config(tmp_path)), "--quiet", "--run-dir", str(out)]) == 0
    for name in ("leaderboard.md", "leaderboard.json", "leaderboard.png", "compare.yaml"):
        assert (out / name).is_file(), name
    board = json.loads((out / "leaderboard.json").read_text())
    assert {r["arm"] for r in board["rows"]} == {"uniform", "global"}
    tops = [r["top1"] for r in board["rows"]]
    assert tops == sorted(tops, reverse=True)  # sorted by top-1
    uniform = next(r for r in board["rows"] if r["arm"] == "uniform")
    assert uniform["delta_baseline"] == 0.0
    assert uniform["delta_dense"] == pytest.approx(uniform["top1"] - board["dense"]["top1"])
    for r in board["rows"]:
        assert r["train_epochs"] == 2 and r["on_budget"] and r["latency_ms"] > 0
        assert abs(r["flops_ratio"] - 0.5) <= 0.01
        run = Path(r["runs"][0])
        assert (run / "model.pt").is_file() and (run / "summary.json").is_file()
    table = (out / "leaderboard.md").read_text()
    assert "| dense |" in table and "Δ uniform" in table
    # `prunelab report` reads the compare folder as its arms
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    assert "global-s0" in (tmp_path / "rep" / "report.md").read_text()


def test_killed_compare_resumes_without_rerunning_a_finished_arm(tmp_path, monkeypatch) -> None:
    config = _config(tmp_path)
    reference = tmp_path / "ref"
    assert main(["compare", str(config), "--quiet", "--run-dir", str(reference)]) == 0

    out = tmp_path / "cmp"
    real_epoch = loop.Trainer._train_epoch

    def dies_in_the_second_arm(self, epoch):
        if "global" in str(self.run_dir) and epoch == 1:
            raise KeyboardInterrupt  # killed in the second epoch of the second arm
        return real_epoch(self, epoch)

    monkeypatch.setattr(loop.Trainer, "_train_epoch", dies_in_the_second_arm)
    assert main(["compare", str(config), "--quiet", "--run-dir", str(out)]) == 130
    first = out / "arms" / "uniform-s0" / "summary.json"
    assert first.is_file() and not (out / "arms" / "global-s0" / "summary.json").exists()
    stamp = first.stat().st_mtime_ns
    monkeypatch.setattr(loop.Trainer, "_train_epoch", real_epoch)

    assert main(["compare", str(config), "--quiet", "--run-dir", str(out)]) == 0
    assert first.stat().st_mtime_ns == stamp  # the finished arm was not rerun
    log = out / "arms" / "global-s0" / "finetune" / "metrics.jsonl"
    starts = [json.loads(x) for x in log.read_text().splitlines() if '"start"' in x]
    assert starts[-1]["resumed"] and starts[-1]["epoch"] == 1
    assert _rows(out) == _rows(reference)  # the same table as an uninterrupted compare


def test_arm_with_another_training_budget_is_refused(tmp_path: Path, capsys) -> None:
    config = _config(tmp_path)
    long = ["arms.global.train.epochs=3"]
    assert main(["compare", str(config), *long, "--quiet", "--run-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "arm global trains 3 epochs" in err[0] and "budget_note" in err[0]
    assert not (tmp_path / "c").exists()  # refused before anything was written
    noted = load_compare(str(config), [*long, "arms.global.budget_note=longer on purpose"])
    assert [s.train_epochs for s in expand_arms(noted)] == [2, 3]


def test_a_bwcp_star_arm_counts_its_fine_tune_in_the_budget(tmp_path: Path) -> None:
    star = ["arms.star.method.name=bwcp", "arms.star.method.finetune_epochs=1"]
    config = load_compare(str(_config(tmp_path)), [*star, "arms.star.train.epochs=1"])
    assert next(s for s in expand_arms(config) if s.arm == "star").train_epochs == 2  # 1 + 1
    with pytest.raises(ConfigError, match="arm star trains 3 epochs"):
        expand_arms(load_compare(str(_config(tmp_path)), star))  # 2 + 1 against a budget of 2


def test_kd_twins_seeds_and_pretrain_budget(tmp_path: Path) -> None:
    config = load_compare(str(_config(tmp_path)), [
        "kd=both", "seeds=[0, 1]", "arms.scratch.pretrain.epochs=1",
        "arms.scratch.method.name=uniform", "arms.scratch.train.epochs=1",
    ])  # fmt: skip
    specs = expand_arms(config)
    names = sorted({s.folder_name for s in specs})
    assert "uniform+kd-s1" in names and "scratch-s0" in names and len(specs) == 12
    kd = next(s for s in specs if s.arm == "global+kd")
    assert kd.config["train"]["distill"]["teacher"] == "dense"
    assert next(s for s in specs if s.arm == "scratch").train_epochs == 2  # 1 + 1
    with pytest.raises(ConfigError, match="kd must be one of"):
        expand_arms(load_compare(str(_config(tmp_path)), ["kd=sometimes"]))
    with pytest.raises(ConfigError, match=r"no arm\(s\)"):
        from prunelab.cli.compare_cmd import run_compare

        run_compare(str(_config(tmp_path)), [], arms=["nope"], run_dir=str(tmp_path / "x"))


def test_a_run_of_other_seeds_keeps_every_finished_run_on_the_leaderboard(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = [str(_config(tmp_path)), "--arms", "uniform", "--quiet", "--run-dir", str(out)]
    assert main(["compare", *args]) == 0
    assert main(["compare", *args, "--seeds", "1"]) == 0
    board = json.loads((out / "leaderboard.json").read_text())
    assert [r["seeds"] for r in board["rows"] if r["arm"] == "uniform"] == [[0, 1]]
    assert main(["compare", *args, "--report-only"]) == 0  # the config says seed 0 only
    board = json.loads((out / "leaderboard.json").read_text())
    assert [r["seeds"] for r in board["rows"] if r["arm"] == "uniform"] == [[0, 1]]


def test_pretrain_arm_trains_dense_first_then_prunes_its_own_model(tmp_path: Path) -> None:
    # a fresh pretrain arm must start (not demand a run to resume), prune the model it
    # trained rather than the base checkpoint, and count both trainings in its epochs
    out = tmp_path / "cmp"
    scratch = ["arms.scratch.pretrain.epochs=1", "arms.scratch.method.name=uniform",
               "arms.scratch.method.round_to=1", "arms.scratch.train.epochs=1"]
    assert main(["compare", str(_config(tmp_path)), *scratch, "--arms", "scratch",
                 "--quiet", "--run-dir", str(out)]) == 0  # fmt: skip
    arm = out / "arms" / "scratch-s0"
    assert (arm / "pretrain" / "model.pt").is_file()
    config = yaml.safe_load((arm / "config.yaml").read_text())
    assert Path(config["checkpoint"]) == arm / "pretrain" / "model.pt"
    assert [r[4] for r in _rows(out) if r[0] == "scratch"] == [2]


def test_latency_budgeted_arm_is_checked_against_the_side_by_side_timing(
    tmp_path: Path, monkeypatch
) -> None:
    from prunelab.cli import compare_cmd
    from prunelab.metrics import count
    from prunelab.report import ModelStats

    out = tmp_path / "cmp"
    config = _config(tmp_path)
    assert main(["compare", str(config), "--quiet", "--run-dir", str(out)]) == 0
    slowdown = {"value": 1.0}

    def fake_measure(models, inputs, top1, **_):  # latency proportional to FLOPs, scaled
        rows = []
        for label, model in models.items():
            flops = count(model, inputs[label]).flops
            ms = flops / 1e6 * (1.0 if label == "dense" else slowdown["value"])
            rows.append(ModelStats(label, None, flops, 0, ms, "NCHW", None))
        for r in rows:
            r.speedup = rows[0].latency_ms / r.latency_ms
        return rows

    budget_settings = []

    def fake_ratio(dense, model, x, spec, pruned_input):  # the budget's own setting is timed
        budget_settings.append(spec.key())
        return slowdown["value"] * count(model, pruned_input).flops / count(dense, x).flops, None

    monkeypatch.setattr(compare_cmd, "measure", fake_measure)
    monkeypatch.setattr(compare_cmd, "measured_ratio", fake_ratio)
    as_latency = ["arms.global.metric=latency", "arms.global.latency.layout=channels_last",
                  "--report-only"]  # fmt: skip
    args = ["compare", str(config), *as_latency, "--quiet", "--run-dir", str(out)]
    assert main(args) == 0  # latency ratio = FLOPs ratio 0.5: on budget
    board = json.loads((out / "leaderboard.json").read_text())
    assert all(r["on_budget"] for r in board["rows"])
    assert any("global (latency 0.5, within 5%)" in n for n in board["notes"])
    assert budget_settings == [{"batch": 2, "threads": 1, "runtime": "torch",
                                "layout": "channels_last"}]  # fmt: skip
    slowdown["value"] = 1.3  # the pruned models run at 0.65 of dense: off a 0.5 latency budget
    assert main(args) == 2
    board = json.loads((out / "leaderboard.json").read_text())
    on = {r["arm"]: r["on_budget"] for r in board["rows"]}
    assert on == {"global": False, "uniform": True}  # uniform is budgeted in FLOPs


def test_a_resumed_arms_wall_time_adds_the_epochs_earlier_processes_kept(tmp_path: Path) -> None:
    from prunelab.cli.compare_cmd import _earlier_processes_seconds

    records = [
        {"kind": "start", "resumed": False, "epoch": 0},
        *({"kind": "epoch", "epoch": e, "time": 10.0} for e in (1, 2, 3)),  # killed in epoch 4
        {"kind": "start", "resumed": True, "epoch": 2},  # its checkpoint was epoch 2's
        *({"kind": "epoch", "epoch": e, "time": 5.0} for e in (3, 4)),
    ]
    (tmp_path / "finetune").mkdir()
    lines = [json.dumps(r) for r in records]
    (tmp_path / "finetune" / "metrics.jsonl").write_text("\n".join(lines) + '\n{"kind": "ep')
    # epochs 1-2 of the first process; its epoch 3 was redone by the last process
    assert _earlier_processes_seconds(tmp_path) == 20.0


def test_leaderboard_labels_of_one_budget_are_spread_clear_of_each_other() -> None:
    from prunelab.report.leaderboard import spread_labels

    # four arms at one FLOPs value within 0.1 points, and one far away along x
    points = [(20.4, 86.9), (20.5, 86.95), (20.3, 86.8), (20.4, 86.92), (9.0, 81.8)]
    heights = spread_labels(points, gap=0.2, near=5.0)
    cluster = sorted(heights[:4])
    assert all(b - a >= 0.2 - 1e-9 for a, b in itertools.pairwise(cluster))
    assert min(cluster) == 86.8  # the lowest keeps its own height
    assert heights[4] == 81.8  # nothing near it: the label stays at its point
    # the labels keep the points' order by top-1, so a reader can follow the leaders
    assert [points[i][1] for i in sorted(range(4), key=heights.__getitem__)] == sorted(
        p[1] for p in points[:4]
    )
