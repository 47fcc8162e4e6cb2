"""The command line with bad input and odd files: one clear line, exit 2, nothing written.

Each test here is a defect found by trying the CLI as a new user would (issue 21).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunelab import io, models
from prunelab.cli import main
from prunelab.cli import setup as cli_setup
from prunelab.cli.config import DEMO, build_config
from prunelab.errors import ConfigError, UnsupportedModelError
from prunelab.metrics import count
from tests.test_cli import SYNTH

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.geteuid() == 0  # root writes anywhere: permission tests need another user
SRC = str(Path(__file__).resolve().parents[1] / "src")


class _DataWasRead(Exception):
    """Raised by a stand-in for build_data: validation let the run through."""


@pytest.fixture
def no_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a run gets as far as decoding its data."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise _DataWasRead

    monkeypatch.setattr(cli_setup, "build_data", refuse)


def _one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith("[prunelab]")]
    assert len(lines) == 1 and "error:" in lines[0], err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prune", "target=abc"], "target='abc' must be a number in (0, 1]"),
        (["prune", "target=null"], "target=None must be a number"),
        (["prune", "target=1.5"], "target=1.5"),
        (["train", "train.epochs=abc"], "train.epochs='abc' must be a whole number"),
        (["train", "train.lr=[1]"], "train.lr=[1] must be a number"),
        (["prune", "latency.repeat=3"], "unknown latency option(s) ['repeat']"),
        (["prune", "latency.repeats=0"], "latency.repeats=0"),
        (["prune", "seed=-1"], "seed=-1"),
        (["prune", "model=resnet9000", "checkpoint=null"], "unknown model 'resnet9000'"),
        (["train", "model=resnet9000"], "unknown model 'resnet9000'"),
        (["prune", "data.name=imagenett"], "unknown data set 'imagenett'"),
        (["prune", "method.criterion=l7"], "unknown criterion 'l7'"),
        (["prune", "method=chex", "method.init_criterion=l7"], "unknown criterion 'l7'"),
        (["prune", "method.round_to=abc"], "method.round_to='abc' must be a whole number"),
        (["prune", "data.batch_size=abc"], "data.batch_size='abc'"),
        (["prune", "data.n_train=[1]"], "data.n_train=[1]"),
        (["prune", "reference=/nonexistent.pt", "checkpoint=null"], "no model file"),
        (["train", "average.decay=abc"], "average.decay='abc'"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_before_data_or_files(
    args: list[str], message: str, tmp_path: Path, capsys, no_data: None
) -> None:
    run = tmp_path / "run"
    overrides = [a for a in SYNTH if a.split("=")[0] not in {x.split("=")[0] for x in args}]
    assert main([args[0], *overrides, *args[1:], "--run-dir", str(run)]) == 2
    _one_line_error(capsys, message)
    assert not run.exists()  # no config.yaml for a run that never starts


def test_the_data_options_error_lists_what_a_user_can_set(capsys, no_data: None) -> None:
    assert main(["prune", *SYNTH, "data.bogus=1"]) == 2
    line = _one_line_error(capsys, "'bogus'", "n_train", "batch_size", "holdout")
    assert "'kw'" not in line


def test_a_method_switch_starts_from_that_methods_defaults() -> None:
    for override in (["method.name=chex"], ["method={name: chex}"], ["method=chex"]):
        assert build_config(DEMO, [], override)["method"] == {"name": "chex"}, override
    # options given alongside apply, in any order; the same name keeps the defaults' options
    both = build_config(DEMO, [], ["method.kappa=0.5", "method.name=chex"])
    assert both["method"] == {"name": "chex", "kappa": 0.5}
    same = build_config(DEMO, [], ["method.name=uniform", "method.round_to=16"])
    assert same["method"] == {**DEMO["method"], "round_to": 16}


def test_prune_method_name_chex_on_the_default_config_runs(tmp_path: Path) -> None:
    run = tmp_path / "chex"
    assert main(["prune", *SYNTH, "method.name=chex", "--quiet", "--run-dir", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["method"] == "chex"


def test_same_seed_gives_the_same_weights_bit_for_bit(tmp_path: Path) -> None:
    def train(run: str, seed: int) -> dict[str, torch.Tensor]:
        args = ["train", "model=resnet20", *SYNTH, f"seed={seed}", "train.deterministic=true"]
        assert main([*args, "--quiet", "--run-dir", str(tmp_path / run)]) == 0
        return io.load(tmp_path / run / "model.pt").state_dict()

    first, second, other = train("a", 7), train("b", 7), train("c", 8)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)  # the seed matters


def test_a_zoo_default_size_is_not_imposed_on_the_data(tmp_path: Path, capsys) -> None:
    """resnet20's 32x32 default does not resize 16x16 images: the run says so and uses 16."""
    run = tmp_path / "run"
    args = ["train", "model=resnet20", *SYNTH, "data.image_size=16", "--run-dir", str(run)]
    assert main(args) == 0
    assert "zoo default is 3x32x32 inputs; running at the data's 3x16x16" in capsys.readouterr().err
    flops = json.loads((run / "summary.json").read_text())["rows"][0]["flops"]
    model = io.load(run / "model.pt")
    assert model.prunelab_input_size == (3, 16, 16)
    assert flops == count(model, torch.zeros(1, 3, 16, 16)).flops
    assert flops < count(model, torch.zeros(1, 3, 32, 32)).flops / 3.9  # not resized to 32


def test_a_method_chosen_resolution_is_applied_and_guarded(tmp_path: Path, capsys) -> None:
    model = models.create("resnet20").eval()
    model.prunelab_resolution = 24  # what DWR's resolution pruning records
    model.prunelab_input_size = (3, 24, 24)
    io.save(model, tmp_path / "m.pt")
    assert io.load(tmp_path / "m.pt").prunelab_resolution == 24
    assert main(["eval", str(tmp_path / "m.pt"), *SYNTH[:4]]) == 0
    assert "(24x24)" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "m.pt"), *SYNTH[:4], "data.resolution=20"]) == 2
    _one_line_error(capsys, "pruned to 24x24", "data.resolution=20")


def test_resume_refuses_a_missing_run_or_checkpoint(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "missing"
    assert main(["train", *SYNTH, "--resume", "--run-dir", str(missing)]) == 2
    _one_line_error(capsys, "no run folder", "drop --resume")
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", *SYNTH, "--resume", "--run-dir", str(empty)]) == 2
    _one_line_error(capsys, "no checkpoint.pt")
    assert list(empty.iterdir()) == []


def test_a_run_folder_under_a_regular_file(tmp_path: Path, capsys, no_data: None) -> None:
    (tmp_path / "file").write_text("x")
    for command in ("prune", "train"):
        assert main([command, *SYNTH, "--run-dir", str(tmp_path / "file" / "run")]) == 2
        _one_line_error(capsys, "is a file, not a folder", "--run-dir")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "file")]) == 2
    _one_line_error(capsys, "is a file, not a folder", "--out")


@pytest.mark.skipif(ROOT, reason="root may write into read-only folders")
def test_unwritable_folders_are_one_line(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, no_data: None
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["prune", *SYNTH, "--run-dir", str(locked / "run")]) == 2
        _one_line_error(capsys, "is not writable", "--run-dir")
        monkeypatch.chdir(locked)  # the default run folder is runs/... under the working dir
        assert main(["train", *SYNTH]) == 2
        _one_line_error(capsys, "is not writable")
        assert main(["report", str(tmp_path), "--out", str(locked / "report")]) == 2
        _one_line_error(capsys, "is not writable", "--out")
    finally:
        locked.chmod(0o755)


def test_a_closed_pipe_is_not_a_traceback(tmp_path: Path) -> None:
    """`prunelab models | head`: the reader went away; exit quietly as with SIGPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "PYTHONPATH": SRC}
    try:
        command = [sys.executable, "-m", "prunelab", "models"]
        done = subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, env=env,
                              timeout=120, check=False)  # fmt: skip
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr == b""


def test_multi_line_messages_become_one_line(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from prunelab.cli import prune_cmd

    def fail(config: dict) -> None:
        raise ConfigError("first line\n    second line\n")

    monkeypatch.setattr(prune_cmd, "run_prune", fail)
    assert main(["prune"]) == 2
    assert _one_line_error(capsys).endswith("error: first line second line")


def test_a_trace_error_names_the_module_and_what_to_do() -> None:
    class Branchy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return y if y.sum() > 0 else -y

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), Branchy())
    from prunelab.graph import trace

    with pytest.raises(UnsupportedModelError) as info:
        trace(net, torch.randn(1, 3, 8, 8))
    message = str(info.value)
    assert "\n" not in message and "'1 (Branchy)'" in message and "leaves=" in message


def test_a_folder_the_process_may_not_write_is_refused_early(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, no_data: None
) -> None:
    """As root every folder is writable, so ask the same question with access() refusing."""
    monkeypatch.setattr(cli_setup.os, "access", lambda path, mode: False)
    assert main(["train", *SYNTH, "--run-dir", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, f"{tmp_path} is not writable", "--run-dir")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["method=random", "data.holdout=0"], "set data holdout"),
        (["method=dwr", "metric=params"], "dwr budgets flops or latency, not params"),
        (["method=torch_pruning", "metric=latency"], "torch_pruning budgets flops, not latency"),
    ],
)  # fmt: skip
def test_a_method_that_cannot_run_the_task_says_so_before_the_run_folder_exists(
    args: list[str], message: str, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    overrides = [a for a in SYNTH if a.split("=")[0] not in {x.split("=")[0] for x in args}]
    assert main(["prune", *overrides, *args, "--run-dir", str(run)]) == 2
    _one_line_error(capsys, message)
    assert not run.exists()
