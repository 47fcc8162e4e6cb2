"""The command line end to end on synthetic data: files, tables, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prunelab import io
from prunelab.cli import main
from prunelab.cli.config import build_config, parse_override
from prunelab.errors import ConfigError
from prunelab.models.layers import reinitialise

SYNTH = [
    "data.name=synthetic", "data.n_train=128", "data.n_test=64", "data.batch_size=32",
    "data.holdout=0", "train.epochs=1", "train.steps_per_epoch=2", "train.threads=1",
    "latency.repeats=2", "latency.threads=1",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def test_overrides_parse_as_yaml_values() -> None:
    assert parse_override("train.epochs=3") == {"train": {"epochs": 3}}
    assert parse_override("checkpoint=null") == {"checkpoint": None}
    cfg = build_config({"train": {"lr": 0.1}}, [], ["train.epochs=2", "method=uniform"])
    assert cfg["train"] == {"lr": 0.1, "epochs": 2} and cfg["method"] == {"name": "uniform"}
    switched = build_config({"method": {"name": "uniform", "criterion": "l2"}}, [],
                            ["method=random", "method.candidates=4"])  # fmt: skip
    assert switched["method"] == {"name": "random", "candidates": 4}
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.epochs")
    with pytest.raises(ConfigError, match="unknown config key"):
        build_config({}, [], ["modle=resnet20"])


def test_train_then_prune_then_eval_then_report(tmp_path: Path, capsys) -> None:
    train_dir = tmp_path / "train"
    assert main(["train", "model=resnet20", *SYNTH, "--quiet", "--run-dir", str(train_dir)]) == 0
    trained = train_dir / "model.pt"
    assert trained.is_file() and (train_dir / "checkpoint.pt").is_file()

    prune_dir = tmp_path / "prune"
    args = ["prune", f"checkpoint={trained}", "method=uniform", "target=0.5", *SYNTH]
    assert main([*args, "--run-dir", str(prune_dir)]) == 0
    out = capsys.readouterr().out
    assert "| dense |" in out and "| pruned |" in out and "speedup" in out
    for name in ("model.pt", "report.md", "summary.json", "metrics.jsonl", "config.yaml",
                 "kept_channels.png", "accuracy_vs_flops.png", "curves.png"):  # fmt: skip
        assert (prune_dir / name).is_file(), name
    summary = json.loads((prune_dir / "summary.json").read_text())
    dense, pruned = summary["rows"]
    assert abs(pruned["flops"] / dense["flops"] - 0.5) < 0.02
    assert pruned["top1"] is not None and dense["top1"] is not None
    records = [json.loads(line) for line in (prune_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["kind"] == "baseline" and records[-1]["kind"] == "pruned"
    model = io.load(prune_dir / "model.pt")
    assert sum(p.numel() for p in model.parameters()) == pruned["params"]

    scratch_dir = tmp_path / "scratch"
    args = ["prune", "model=resnet20", "checkpoint=null", f"reference={trained}", *SYNTH, "--quiet"]
    assert main([*args, "--run-dir", str(scratch_dir)]) == 0
    assert json.loads((scratch_dir / "summary.json").read_text())["rows"][0]["top1"] is not None

    assert main(["eval", str(prune_dir / "model.pt"), *SYNTH[:4]]) == 0
    assert "top-1" in capsys.readouterr().out
    report_dir = tmp_path / "cmp"
    assert main(["report", str(prune_dir), str(train_dir), "--out", str(report_dir)]) == 0
    assert (report_dir / "report.md").is_file() and (report_dir / "accuracy_vs_flops.png").is_file()


def test_prune_reuses_the_last_epochs_evaluation(tmp_path: Path, monkeypatch) -> None:
    """The fine-tune's last epoch evaluated the pruned model: prune does not evaluate it again,
    and the figure it reports is what evaluating the saved model gives."""
    import prunelab.cli.prune_cmd as prune_cmd
    from prunelab.cli.setup import make_data
    from prunelab.methods.finetune import headline

    calls = []
    monkeypatch.setattr(prune_cmd, "headline", lambda m, d: calls.append(1) or headline(m, d))
    run = tmp_path / "prune"
    args = ["prune", "model=resnet20", "checkpoint=null", "method=uniform", "target=0.5", *SYNTH,
            "--quiet"]
    assert main([*args, "--run-dir", str(run)]) == 0
    assert calls == []  # no checkpoint: no dense evaluation; the pruned one came from training
    summary = json.loads((run / "summary.json").read_text())
    data = make_data(build_config({}, [str(run / "config.yaml")], []))
    assert summary["rows"][1]["top1"] == headline(io.load(run / "model.pt").eval(), data)[1]
    assert summary["rows"][1]["top1"] == summary["info"]["finetune"]["top1"]


def test_train_resume_continues_the_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", "model=resnet20", *SYNTH, "--quiet", "--run-dir", str(run)]) == 0
    more = [s for s in SYNTH if not s.startswith("train.epochs")] + ["train.epochs=2"]
    assert (
        main(["train", "model=resnet20", *more, "--quiet", "--resume", "--run-dir", str(run)]) == 0
    )
    epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["kind"] == "epoch"] == [1, 2]


def test_train_with_average_saves_the_averaged_weights(tmp_path: Path) -> None:
    run = tmp_path / "run"
    more = [s for s in SYNTH if not s.startswith("train.epochs")] + ["train.epochs=2"]
    args = ["train", "model=resnet20", *more, "average.decay=null", "average.start_epoch=1"]
    assert main([*args, "--quiet", "--run-dir", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    average = summary["info"]["average"]
    assert average["name"] == "swa1" and summary["rows"][0]["label"] == "trained (swa1)"
    assert summary["rows"][0]["top1"] == average["top1"]
    assert average["last_step_top1"] == summary["info"]["final"]["top1"]
    last = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][-2]
    assert last["swa1_test_top1"] == average["top1"]  # the saved model is the average
    assert io.load(run / "model.pt").prunelab_meta["average"] == {"decay": None,
                                                                  "start_epoch": 1}


def test_train_reinit_trains_a_pruned_architecture_from_fresh_weights(tmp_path: Path) -> None:
    """`reinit=true` keeps the checkpoint's (pruned) shapes and replaces its weights with the
    zoo initialisation for the seed; at a vanishing lr the saved weights are exactly those."""
    train_dir, prune_dir = tmp_path / "train", tmp_path / "prune"
    assert main(["train", "model=resnet20", *SYNTH, "--quiet", "--run-dir", str(train_dir)]) == 0
    assert main(["prune", f"checkpoint={train_dir / 'model.pt'}", "method=uniform", "target=0.5",
                 *SYNTH, "--quiet", "--run-dir", str(prune_dir)]) == 0  # fmt: skip
    pruned = prune_dir / "model.pt"
    still = ["train.lr=1e-12", "train.momentum=0", "train.nesterov=false", "train.weight_decay=0",
             "seed=3"]
    runs = {}
    for name, extra in (("fresh", ["reinit=true"]), ("again", ["reinit=true"]), ("kept", [])):
        run = tmp_path / name
        args = ["train", f"checkpoint={pruned}", *SYNTH, *still, *extra, "--quiet"]
        assert main([*args, "--run-dir", str(run)]) == 0
        runs[name] = io.load(run / "model.pt").state_dict()
    source = io.load(pruned).state_dict()
    expected = reinitialise(io.load(pruned), 3).state_dict()
    convs = [k for k, v in source.items() if k.endswith("weight") and v.dim() == 4]
    assert convs and {k: v.shape for k, v in runs["fresh"].items()} == {
        k: v.shape for k, v in source.items()
    }
    for k in convs:
        assert torch.allclose(runs["fresh"][k], expected[k], atol=1e-6), k
        assert torch.equal(runs["fresh"][k], runs["again"][k]), k
        assert torch.allclose(runs["kept"][k], source[k], atol=1e-6), k
    assert not any(torch.allclose(runs["fresh"][k], source[k], atol=1e-3) for k in convs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prune", "method=nope", *SYNTH], "unknown method 'nope'"),
        (["prune", "model=resnet9000", "checkpoint=null", *SYNTH], "unknown model 'resnet9000'"),
        (["prune", "model=resnet20", "checkpoint=null", "target=0.001", *SYNTH], "cannot reach"),
        (["prune", "missing.yaml"], "no config file"),
        (["prune", "checkpoint=/nonexistent/model.pt", *SYNTH], "no model file"),
        (["train", "model=resnet20", "train.epochs=-1", *SYNTH[:4]], "epochs"),
        (["train", "model=resnet20", "--resume", *SYNTH], "--resume needs --run-dir"),
        (["train", "model=resnet20", "average.start_epoch=1", *SYNTH], "nothing would be averaged"),
        (["train", "model=resnet20", "average.decya=0.9", *SYNTH], "unknown average option"),
        (["prune", "average.decay=0.9", *SYNTH], "applies to `prunelab train`"),
        (["prune", "reinit=true", *SYNTH], "applies to `prunelab train checkpoint=PATH`"),
        (["train", "model=resnet20", "reinit=true", *SYNTH], "give checkpoint=PATH"),
        (["train", "model=resnet20", "reinit=maybe", *SYNTH], "reinit='maybe' must be true"),
        (["prune", "model=resnet20", "checkpoint=null", "data.name=cifar10_jpg",
          "data.root=/nonexistent"], "/nonexistent"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_line_and_nonzero_exit(
    args: list[str], message: str, tmp_path: Path, capsys
) -> None:
    run_dir = [] if "--resume" in args else ["--run-dir", str(tmp_path / "r")]
    assert main([*args, *run_dir]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 or "[prunelab]" in err


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("random", ["method.candidates=3", "method.bn_batches=1", "data.holdout=32"]),
        ("chex", ["checkpoint=null", "train.epochs=2"]),
        ("bwcp", ["checkpoint=null", "method.target_control=true"]),
        ("dwr", ["method.dims=[width, resolution]", "method.rounds=1", "method.round_epochs=1",
                 "data.holdout=32", "method.probe_batches=1"]),
    ],
)  # fmt: skip
def test_every_method_runs_from_the_command_line(
    method: str, extra: list[str], tmp_path: Path
) -> None:
    """`prunelab prune method=...` goes from a model to a saved, smaller model and a report."""
    train_dir = tmp_path / "train"
    assert main(["train", "model=resnet20", *SYNTH, "--quiet", "--run-dir", str(train_dir)]) == 0
    run = tmp_path / method
    args = ["prune", f"checkpoint={train_dir / 'model.pt'}", "model=resnet20", f"method={method}",
            "target=0.5", *SYNTH, *extra, "--quiet", "--run-dir", str(run)]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    dense, pruned = summary["rows"]
    assert abs(pruned["flops"] / dense["flops"] - 0.5) <= 0.03, (method, pruned, dense)
    model = io.load(run / "model.pt")
    assert sum(p.numel() for p in model.parameters()) == pruned["params"]
    assert (run / "report.md").is_file()


def test_random_from_scratch_runs_from_the_shipped_config_without_a_checkpoint(
    tmp_path: Path, capsys
) -> None:
    out = tmp_path / "scratch"
    args = ["prune", "configs/random_scratch_resnet20_cifar10.yaml", *SYNTH, "data.holdout=32",
            "data.cutout=0", "train.batch_size=32", "method.candidates=2", "method.score_steps=2",
            "method.bn_batches=1", "--run-dir", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "no checkpoint was given" not in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert abs(summary["rows"][-1]["flops"] / summary["rows"][0]["flops"] - 0.5) <= 0.01
    assert (out / "scratch").is_dir()  # the winner was trained in the from-scratch folder
